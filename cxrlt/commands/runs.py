"""python -m cxrlt.runs: list runs with their scores (cxrlt.train.runs)."""

import sys

from cxrlt.train.runs import main as main

if __name__ == "__main__":
    sys.exit(main())
