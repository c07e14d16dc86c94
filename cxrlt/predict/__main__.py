"""python -m cxrlt.predict"""

import sys

from .inference import main

sys.exit(main())
