"""python -m cxrlt.evaluate"""

import sys

from .align import main

sys.exit(main())
