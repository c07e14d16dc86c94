"""python -m cxrlt.weights: fetch a backbone's ImageNet weights for offline nodes, or convert a timm checkpoint
(--from-timm) for cxrlt's own backbones (cxrlt.model.pretrained)."""

import sys

from cxrlt.model.pretrained import main as main

if __name__ == "__main__":
    sys.exit(main())
