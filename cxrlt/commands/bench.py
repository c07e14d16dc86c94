"""python -m cxrlt.bench: benchmarks (cxrlt.tools.bench)."""

import sys

from cxrlt.tools.bench import main as main

if __name__ == "__main__":
    sys.exit(main())
