"""python -m cxrlt.weights: fetch a backbone's ImageNet weights for offline nodes (cxrlt.model.pretrained)."""

import sys

from cxrlt.model.pretrained import main as main

if __name__ == "__main__":
    sys.exit(main())
