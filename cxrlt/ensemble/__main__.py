"""python -m cxrlt.ensemble"""

import sys

from .ensembler import main

sys.exit(main())
