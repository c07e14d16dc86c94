"""python -m cxrlt.augment: a preview grid of augmented and mixed batches (cxrlt.report.preview)."""

import sys

from cxrlt.report.preview import main as main

if __name__ == "__main__":
    sys.exit(main())
