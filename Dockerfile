# syntax=docker/dockerfile:1
#
# Segment service image: gunicorn + Flask scoring API on python:3.11-slim.
#
# Two ways to get a model bundle into the container:
#
#   1. Mounted read-only at run time (default, recommended: one image serves any bundle):
#        docker build -t segment-service .
#        docker run -p 127.0.0.1:8000:8000 -e API_KEYS -e ADMIN_API_KEYS \
#            -v "$PWD/model_artifacts:/app/model_artifacts:ro" segment-service
#      Roll out a new bundle: train on the host (model_artifacts/current switches), then
#      POST /admin/reload or send SIGHUP (`docker kill -s HUP <container>`).
#
#   2. Baked in by a build stage that runs the demo training (self-contained image, demos, CI):
#        docker build --build-arg BAKE_BUNDLE=1 -t segment-service:demo .
#        docker run -p 127.0.0.1:8000:8000 -e API_KEYS -e ADMIN_API_KEYS segment-service:demo
#
# No secrets are baked in: API_KEYS, ADMIN_API_KEYS and BUNDLE_HMAC_KEY come from the
# environment at run time. All gunicorn settings come from the environment too (BIND,
# WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_TIMEOUT, LOG_LEVEL; see gunicorn.conf.py).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# 0: the bundle is mounted at /app/model_artifacts; 1: the demo bundle is trained into the image
ARG BAKE_BUNDLE=0

# ---- deps: the pinned requirements in a virtualenv, built before any code is copied so the
# ---- layer is reused until requirements.txt changes
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

# ---- compiler: the tree compiler's own environment (lleaves needs llvmlite < 0.44, the service
# ---- 0.50; see requirements-compile.txt); only the bake stage uses it, the image does not ship it
FROM ${PYTHON_IMAGE} AS compiler
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv-compile
COPY requirements-compile.txt /tmp/requirements-compile.txt
RUN /opt/venv-compile/bin/pip install --no-cache-dir -r /tmp/requirements-compile.txt

# ---- app: runtime libraries, the venv, the code, a non-root user
FROM ${PYTHON_IMAGE} AS app
# LightGBM needs the GNU OpenMP runtime, which the slim image lacks
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app app
COPY --from=deps /opt/venv /opt/venv
# NUMBA_CACHE_DIR: explain's compiled walk and the batch answer writer are cached there (the
# code folder is read-only)
ENV PATH=/opt/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIND=0.0.0.0:8000 \
    WEB_CONCURRENCY=2 \
    MODEL_ROOT=/app/model_artifacts
WORKDIR /app
# code last: it changes most often; owned by root so the app user cannot modify it
COPY scoring/ /app/scoring/
COPY api/ /app/api/
COPY training/ /app/training/
COPY wsgi.py gunicorn.conf.py /app/

# ---- bundle: trains the demo bundle (only built when BAKE_BUNDLE=1), with compiled trees built
# ---- for the architecture's baseline CPU (TREE_COMPILER_CPU=generic): the image may be built on
# ---- one machine and served on another, where code tuned to the build machine's CPU could be
# ---- refused (the service then falls back to LightGBM and says why in the log and /version)
FROM app AS bundle
COPY --from=compiler /opt/venv-compile /opt/venv-compile
ENV TREE_COMPILER_PYTHON=/opt/venv-compile/bin/python \
    TREE_COMPILER_CPU=generic
COPY examples/ /app/examples/
RUN python -m training generate --out /tmp/demo --seed 42 \
    && python -m training train --config examples/demo.toml --data-dir /tmp/demo \
        --output /app/model_artifacts \
    && rm -rf /tmp/demo

# ---- the two variants of the final image
FROM app AS serve-0
# the bundle root is a mount point: -v <host bundles>:/app/model_artifacts:ro
RUN mkdir -p /app/model_artifacts
FROM app AS serve-1
COPY --from=bundle /app/model_artifacts /app/model_artifacts

# ---- final
# the stage name is picked by a build arg, which hadolint cannot resolve to a tag
# hadolint ignore=DL3006
FROM serve-${BAKE_BUNDLE} AS final
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('BIND', '0.0.0.0:8000').rsplit(':', 1)[-1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
