"""python -m cxrlt.augment: a preview grid of augmented and mixed batches (cxrlt.tools.preview)."""

import sys

from cxrlt.tools.preview import main as main

if __name__ == "__main__":
    sys.exit(main())
