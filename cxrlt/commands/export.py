"""python -m cxrlt.export: one SavedModel of runs' fold models, TTA, decoding and ensemble (cxrlt.ensemble.export)."""

import sys

from cxrlt.ensemble.export import main as main

if __name__ == "__main__":
    sys.exit(main())
