"""python -m cxrlt.train"""

import sys

from .kfold import main

sys.exit(main())
