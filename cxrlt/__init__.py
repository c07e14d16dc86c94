"""cxrlt: multi-label, long-tailed chest X-ray classification with TensorFlow/Keras.

The package reads top to bottom as the data flows:
classes -> dataset -> folds -> pipeline (+ mix, augment) -> models -> losses
-> train -> predict -> ensemble -> submission / evaluate.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter hides what cxrlt says; `--tf-log` (or exporting the variable) brings it back.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
