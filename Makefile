# Thin entry points; the logic lives in scripts/*.sh.
.PHONY: run test lint bench docker-lint clean clean-all help

ARGS ?=

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run:  ## create .venv, train the demo bundle if none, serve on 127.0.0.1:8000 (PORT=...)
	@scripts/run.sh

test:  ## create .venv (dev), ensure Redis, run ruff and pytest (ARGS="-x" passes to pytest)
	@scripts/test.sh $(ARGS)

lint:  ## ruff check, ruff format --check, shellcheck
	@scripts/lint.sh

bench:  ## run the benchmarks under bench/ (see bench/RESULTS.md)
	@bench/run.sh $(ARGS)

docker-lint:  ## hadolint the Dockerfile (no Docker engine needed)
	@scripts/docker-lint.sh

clean:  ## remove caches
	@scripts/clean.sh

clean-all:  ## remove caches, .venv, .run, data/ and trained bundles
	@scripts/clean.sh --all
