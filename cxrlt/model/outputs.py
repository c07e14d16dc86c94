"""The probability layer of a single-label model: softmax over K logits, or CORN's K-1 conditional logits turned
into K grade probabilities. Built from Keras' own layers only (Activation, Dense with fixed weights), so the saved
.keras file passes cxrlt's model-file allow-list and loads anywhere without cxrlt's code.

CORN (Shi, Cao and Raschka): task k's logit z_k gives P(grade > k | grade >= k) = sigmoid(z_k), so
P(grade > k) = prod_{j <= k} sigmoid(z_j) (rank-consistent: it can only fall with k) and
P(grade = k) = P(grade > k-1) - P(grade > k), with P(grade > -1) = 1. Here the product is exp of a cumulative
sum of log-sigmoids (a lower-triangular Dense of ones) and the differences a Dense of +-1 with bias (1, 0, ...).
"""

from __future__ import annotations

import keras
import numpy as np

OUTPUTS = ("sigmoid", "softmax", "corn")


def corn_matrices(num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cumulative-sum kernel [K-1, K-1], difference kernel [K-1, K], difference bias [K])."""
    k = int(num_classes)
    if k < 2:
        raise ValueError(f"corn needs at least 2 grades, got {k}")
    cumsum = np.triu(np.ones((k - 1, k - 1), np.float32))  # out_j = sum_{i <= j} in_i (x @ kernel)
    diff = np.zeros((k - 1, k), np.float32)
    for i in range(k - 1):
        diff[i, i] -= 1.0      # P(grade = i) loses P(grade > i)
        diff[i, i + 1] += 1.0  # P(grade = i+1) gains P(grade > i)
    bias = np.zeros(k, np.float32)
    bias[0] = 1.0
    return cumsum, diff, bias


def probabilities(logits, output: str, num_classes: int):
    """The layer(s) from the logits to the probabilities the saved model outputs (named "probabilities")."""
    if output == "sigmoid":
        return keras.layers.Activation("sigmoid", name="probabilities", dtype="float32")(logits)
    if output == "softmax":
        return keras.layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    if output != "corn":
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    cumsum, diff, bias = corn_matrices(num_classes)
    x = keras.layers.Activation("log_sigmoid", name="corn_log_conditional", dtype="float32")(logits)
    total = keras.layers.Dense(num_classes - 1, use_bias=False, trainable=False, name="corn_cumulative", dtype="float32")
    x = keras.layers.Activation("exponential", name="corn_survival", dtype="float32")(total(x))
    step = keras.layers.Dense(num_classes, trainable=False, name="probabilities", dtype="float32")
    probs = step(x)
    total.set_weights([cumsum])
    step.set_weights([diff, bias])
    return probs
