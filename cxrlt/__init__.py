"""cxrlt: multi-label, long-tailed chest X-ray classification with TensorFlow/Keras.

The package reads top to bottom as the data flows:
classes -> dataset -> folds -> pipeline (+ mix, augment) -> models -> losses
-> train -> predict -> ensemble -> submission / evaluate.
"""

__version__ = "0.1.0"

from . import tfquiet as _tfquiet

# TensorFlow's C++ start-up chatter hides what cxrlt says: TF_CPP_MIN_LOG_LEVEL defaults to 2 and the
# lines TensorFlow prints before honouring it are filtered (tfquiet.py says why). `--tf-log` on any
# command, or TF_CPP_MIN_LOG_LEVEL=0, brings everything back.
_tfquiet.install()
