"""python -m cxrlt.check: the pre-flight image check (cxrlt.data.check)."""

import sys

from cxrlt.data.check import main as main

if __name__ == "__main__":
    sys.exit(main())
