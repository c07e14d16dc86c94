"""python -m cxrlt.report"""

import sys

from .run_report import main

sys.exit(main())
