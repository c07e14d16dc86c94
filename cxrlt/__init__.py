"""cxrlt: multi-label, long-tailed chest X-ray classification with TensorFlow/Keras.

One package per stage of the job; each imports only the stages before it in ARCHITECTURE.md's order
(utils, config, data, model, evaluate, runtime, predict, train, ensemble, report, tools).
"""

__version__ = "0.1.0"

import os as _os

from .utils import tfquiet as _tfquiet

# `python -m cxrlt.check`, `cxrlt.prepare` ... (command names older than the stage packages) are thin
# modules in commands/; putting that folder on the package path keeps them out of the stage listing.
__path__.append(_os.path.join(_os.path.dirname(__file__), "commands"))

# TensorFlow's C++ start-up chatter hides what cxrlt says: TF_CPP_MIN_LOG_LEVEL defaults to 2 and the
# lines TensorFlow prints before honouring it are filtered (utils/tfquiet.py says why). `--tf-log` on any
# command, or TF_CPP_MIN_LOG_LEVEL=0, brings everything back.
_tfquiet.install()
