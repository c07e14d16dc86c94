"""python -m cxrlt.prepare: pre-resized image files and TFRecord shards (cxrlt.data.prepare)."""

import sys

from cxrlt.data.prepare import main as main

if __name__ == "__main__":
    sys.exit(main())
