"""python -m cxrlt.aggregate: measure study aggregation on a run's out-of-fold scores (cxrlt.predict.aggregate)."""

import sys

from cxrlt.predict.aggregate import main as main

if __name__ == "__main__":
    sys.exit(main())
