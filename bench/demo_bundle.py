"""The bundle the serving, batch and profile benchmarks share, prepared once per run.

    python -m bench.demo_bundle --out DIR [--customers 75000] [--shape demo|production]

Writes a bundle root with ``current`` under DIR: the demo (or production-sized) bundle trained
by the real pipeline on generated data when ``training/`` is there, else the small bundle the
tests build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import SHAPES, prepare_bundle


def main(argv: list[str] | None = None) -> int:
    """Prepare the bundle and say where it came from."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="bundle root to create")
    ap.add_argument("--customers", type=int, default=75_000, help="demo customers to train on")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="demo", help="which bundle")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    print(prepare_bundle(args.out, customers=args.customers, shape=args.shape), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
