"""python -m cxrlt.submission: check a submission CSV or zip (cxrlt.ensemble.submission)."""

import sys

from cxrlt.ensemble.submission import main as main

if __name__ == "__main__":
    sys.exit(main())
