"""python -m cxrlt.explain: Grad-CAM over a run's fold models (cxrlt.report.explain)."""

import sys

from cxrlt.report.explain import main as main

if __name__ == "__main__":
    sys.exit(main())
