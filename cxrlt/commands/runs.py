"""python -m cxrlt.runs: list runs with their scores (cxrlt.runtime.runs)."""

import sys

from cxrlt.runtime.runs import main as main

if __name__ == "__main__":
    sys.exit(main())
