"""python -m cxrlt.synthetic: write the synthetic demo data set (cxrlt.data.synthetic)."""

import sys

from cxrlt.data.synthetic import main as main

if __name__ == "__main__":
    sys.exit(main())
