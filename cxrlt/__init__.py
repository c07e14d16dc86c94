"""cxrlt: multi-label, long-tailed chest X-ray classification with TensorFlow/Keras.

The package reads top to bottom as the data flows:
classes -> dataset -> folds -> pipeline (+ mix, augment) -> models -> losses
-> train -> predict -> ensemble -> submission / evaluate.
"""

__version__ = "0.1.0"
