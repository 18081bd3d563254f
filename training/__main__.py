"""Entry point of ``python -m training``."""

import os
import sys

# Before any OpenMP runtime loads (scikit-learn, LightGBM): idle OpenMP threads sleep instead of
# spinning. On a small machine shared with other work, spinning threads wait for a descheduled
# sibling at every barrier, which made K-Means and LightGBM 10-50x slower in our measurements.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
