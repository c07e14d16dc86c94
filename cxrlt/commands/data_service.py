"""python -m cxrlt.data_service: a tf.data service dispatcher or worker (cxrlt.data.service)."""

import sys

from cxrlt.data.service import main as main

if __name__ == "__main__":
    sys.exit(main())
