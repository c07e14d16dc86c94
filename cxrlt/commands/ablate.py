"""python -m cxrlt.ablate: ablation grids (cxrlt.tools.ablate)."""

import sys

from cxrlt.tools.ablate import main as main

if __name__ == "__main__":
    sys.exit(main())
