"""python -m cxrlt.fuse: learned study fusion over a trained run's frozen features (cxrlt.train.fuse)."""

import sys

from cxrlt.train.fuse import main as main

if __name__ == "__main__":
    sys.exit(main())
