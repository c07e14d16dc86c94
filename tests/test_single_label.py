"""Single-label tasks (issue 24): one class (multiclass) or grade (ordinal) per image.

Checked against the world: scikit-learn and SciPy for every metric, Keras' own categorical losses and a NumPy
transcription of coral_pytorch's corn_loss / corn_label_from_logits for the losses and decisions, the papers'
formulas (Cui et al.'s effective number, Menon et al.'s logit adjustment), a chi-squared test of Balanced-MixUp's
class-sampled side and a Kolmogorov-Smirnov test of its lambda, real label files (Kaggle's EyePACS trainLabels.csv
rows, the shared cxr_fullres and nih1000 CSVs), and one tiny multiclass demo trained, ensembled, evaluated and
reported on the product path (the `single_label_run` fixture).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as sk

from cxrlt.config import ConfigError, load as load_config
from cxrlt.data import single_label as sl_data
from cxrlt.evaluate import single_label as sl

from .conftest import FULLRES, NIH1000, need

# Kaggle "Diabetic Retinopathy Detection", trainLabels.csv: its header and first rows, verbatim.
EYEPACS_ROWS = "image,level\n10_left,0\n10_right,0\n13_left,0\n15_left,1\n15_right,2\n16_left,4\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- detection

def test_task_is_detected_from_each_csv_form(tmp_path, caplog):
    caplog.set_level("INFO")
    names = write(tmp_path / "names.csv", "path,patient_id,label\na.png,1,cat\nb.png,2,dog\nc.png,3,cat\n")
    table, found = sl_data.read_table(names)
    assert (found.task, found.form, table.classes) == ("multiclass", "column", ("cat", "dog"))
    assert table.labels.tolist() == [[1, 0], [0, 1], [1, 0]] and table.task == "multiclass"
    assert "task multiclass (auto-detected: one label column 'label'" in caplog.text

    grades = write(tmp_path / "grades.csv", "path,grade\na.png,0\nb.png,2\nc.png,1\n")
    table, found = sl_data.read_table(grades)
    assert found.task == "multiclass" and table.classes == ("0", "1", "2")  # auto never guesses ordinal
    table, found = sl_data.read_table(grades, task="ordinal")
    assert found.task == "ordinal" and np.argmax(table.labels, 1).tolist() == [0, 2, 1]

    eyepacs = write(tmp_path / "trainLabels.csv", EYEPACS_ROWS)  # the real header: image, level
    table, found = sl_data.read_table(eyepacs, task="ordinal", classes=["DR0", "DR1", "DR2", "DR3", "DR4"])
    assert found.column == "level" and table.ids.tolist()[:2] == ["10_left", "10_right"]
    assert np.argmax(table.labels, 1).tolist() == [0, 0, 0, 1, 2, 4] and table.classes[4] == "DR4"

    one_hot = write(tmp_path / "one_hot.csv", "path,A,B,C\na.png,1,0,0\nb.png,0,0,1\nc.png,0,1,0\n")
    table, found = sl_data.read_table(one_hot)
    assert (found.task, found.form) == ("multiclass", "one_hot") and "exactly one 1" in found.why
    assert sl_data.read_table(one_hot, task="multilabel")[1].task == "multilabel"

    multi_hot = need(NIH1000) / "labels.csv"  # real NIH labels: 213 images carry several findings
    table, found = sl_data.read_table(multi_hot, image_root=NIH1000)
    assert found.task == "multilabel" and table.task == "multilabel" and table.labels.shape == (1000, 15)

    # a CXR-LT edition's file is multi-label by definition, even when every row happens to hold one finding
    from cxrlt.data import classes as cls

    rows = ["path,study_id,ViewPosition," + ",".join(f'"{c}"' for c in cls.CXRLT2023)]
    for i in range(4):
        rows.append(f"files/p10/p10000001/s5000000{i}/img{i}.jpg,5000000{i},PA," + ",".join(
            "1" if j == i else "0" for j in range(len(cls.CXRLT2023))))
    edition = write(tmp_path / "cxrlt.csv", "\n".join(rows) + "\n")
    assert sl_data.read_table(edition)[1].task == "multilabel"

    real = need(FULLRES) / "images.csv"  # a real single-label file: 'finding' (COVID-19, No Finding, ...)
    table, found = sl_data.read_table(real, label_column="finding", image_root=FULLRES)
    assert found.task == "multiclass" and set(table.classes) == {"ARDS", "COVID-19", "No Finding", "Pneumocystis"}
    assert table.labels.sum(axis=0).tolist() == [1, 90, 8, 2] and len(np.unique(table.patients)) == 54
    with pytest.raises(sl_data.SingleLabelError, match="no label column 'findings'.*did you mean 'finding'"):
        sl_data.read_table(real, label_column="findings")


@pytest.mark.parametrize("text, task, classes, match", [
    ("path,A,B\na.png,1,1\nb.png,0,1\n", "multiclass", "edition", r"1 rows have two or more labels, first image 'a.png' \(A, B\)"),
    ("path,label\na.png,COVID-19|ARDS\nb.png,ARDS\n", "auto", "edition", r"line 2, column 'label' holds 2 labels"),
    ("path,label\na.png,Healty\nb.png,Severe\n", "multiclass", ["Healthy", "Severe"],
     r"line 2, column 'label': unknown class 'Healty' \(did you mean 'Healthy'\?\)"),
    ("path,grade\na.png,1\nb.png,7\n", "ordinal", ["none", "mild", "moderate", "severe", "proliferative"],
     r"line 3: grade '7' is out of range: data.classes names 5 classes, so grades run 0..4"),
    ("path,grade\na.png,-1\nb.png,2\n", "ordinal", "edition", r"line 2: grade '-1' is out of range"),
    ("path,grade\na.png,1.5\nb.png,2\n", "ordinal", "edition", r"line 2: grade '1.5' is out of range"),
    ("path,A,B\na.png,0,0\nb.png,0,1\n", "multiclass", "edition", r"1 rows have no label"),
])
def test_bad_single_label_files_are_refused_naming_the_row(tmp_path, text, task, classes, match):
    csv = write(tmp_path / "labels.csv", text)
    with pytest.raises(sl_data.SingleLabelError, match=match):
        sl_data.read_table(csv, task=task, classes=classes)


def test_train_stops_with_one_error_line_on_two_labels_in_a_single_label_csv(tmp_path, capsys):
    from cxrlt.train import kfold

    csv = write(tmp_path / "labels.csv", "path,label\na.png,cat;dog\nb.png,dog\n")
    with pytest.raises(SystemExit) as stop:
        kfold.main(["--labels", str(csv), "--out", str(tmp_path / "runs"), "--weights", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "holds 2 labels" in err[0]


def test_the_single_label_demo_sets_read_as_a_users_file_would(tmp_path):
    from cxrlt.data import synthetic_single

    mc = synthetic_single.make_single_label_demo(tmp_path / "mc", "multiclass", n_patients=40, image_size=32)
    table, found = sl_data.read_table(mc.train_csv, image_root=mc.root, check_files=True)
    assert found.task == "multiclass" and set(table.classes) <= set(synthetic_single.MULTICLASS)
    counts = table.class_counts()
    assert counts[list(table.classes).index("No Finding")] == counts.max()  # long-tailed, as the demo says
    od = synthetic_single.make_single_label_demo(tmp_path / "od", "ordinal", n_patients=40, image_size=32)
    table, found = sl_data.read_table(od.train_csv, task="ordinal", image_root=od.root, check_files=True)
    assert found.column == "grade" and table.task == "ordinal" and table.classes[0] == "0"
    train = set(pd.read_csv(od.train_csv).patient_id)
    assert not train & set(pd.read_csv(od.test_csv).patient_id)  # the test list holds other patients


# --------------------------------------------------------------------------------------------- config

def test_a_single_label_task_sets_multi_label_defaults_aside_but_never_a_users_choice():
    cfg = load_config(None, {"data": {"task": "multiclass"}})
    assert cfg["loss"] == {"name": "ce", "params": {}} and cfg["mix"]["label_mode"] == "convex"
    assert cfg["mix"]["balanced_mixup_labels"] == "convex"
    with pytest.raises(ConfigError, match="loss.name focal is a multi-label .*softmax_focal"):
        load_config(None, {"data": {"task": "multiclass"}, "loss": {"name": "focal"}})
    with pytest.raises(ConfigError, match="corn is an ordinal loss"):
        load_config(None, {"data": {"task": "multiclass"}, "loss": {"name": "corn"}})
    with pytest.raises(ConfigError, match="train.monitor kappa is not a multiclass metric"):
        load_config(None, {"data": {"task": "multiclass"}, "train": {"monitor": "kappa"}})
    with pytest.raises(ConfigError, match="ce is a single-label loss"):
        load_config(None, {"data": {"task": "multilabel"}, "loss": {"name": "ce"}})
    for path in ("configs/seed000_severity.yaml", "configs/seed003_eyepacs.yaml", "configs/seed003_kvasir.yaml"):
        cfg = load_config(Path(__file__).parents[1] / path)
        assert cfg["data"]["task"] in ("multiclass", "ordinal") and cfg["mix"]["mosaic"] == 0.0
    # data.task auto, settled once the CSV is read: the same rule, from the defaults
    from cxrlt.config import tasks

    cfg, notes = tasks.resolved(load_config(None, {"mix": {"mixup": 0.5, "mosaic": 0.0}}), "multiclass")
    assert cfg["loss"]["name"] == "ce" and cfg["mix"]["label_mode"] == "convex" and len(notes) == 2


# -------------------------------------------------------------------------------------------- metrics

def _random_case(rng, k: int, n: int, ties: bool):
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present (scikit-learn's multi-class AUC needs them)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += rng.uniform(0, 2)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    if ties:
        p = np.round(p, 1) + 1e-9
        p /= p.sum(axis=1, keepdims=True)
    return y, p


@pytest.mark.parametrize("seed", range(12))
def test_every_metric_matches_scikit_learn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    y, p = _random_case(rng, k, int(rng.integers(4 * k, 300)), ties=seed % 3 == 0)
    r = sl.evaluate(np.eye(k)[y], p, [f"c{i}" for i in range(k)], task="ordinal")
    pred = p.argmax(axis=1)
    labels = list(range(k))
    assert r["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert r["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert r["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0))
    assert r["weighted_f1"] == pytest.approx(sk.f1_score(y, pred, average="weighted", zero_division=0))
    assert r["macro_precision"] == pytest.approx(sk.precision_score(y, pred, average="macro", zero_division=0))
    assert r["mcc"] == pytest.approx(sk.matthews_corrcoef(y, pred))
    assert r["kappa"] == pytest.approx(sk.cohen_kappa_score(y, pred, weights="quadratic", labels=labels))
    assert r["kendall_tau"] == pytest.approx(stats.kendalltau(y, pred).statistic)
    assert r["log_loss"] == pytest.approx(sk.log_loss(y, p, labels=labels))
    if k > 2:
        assert r["auc_ovr"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovr", average="macro"))
        assert r["auc_ovo"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovo", average="macro"))
    else:
        assert r["auc_ovo"] == pytest.approx(sk.roc_auc_score(y, p[:, 1]))
    assert r["confusion"] == sk.confusion_matrix(y, pred, labels=labels).tolist()
    precision, recall, f1, support = sk.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for c, row in enumerate(r["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["n_pos"]) == pytest.approx(
            (precision[c], recall[c], f1[c], support[c]))
        assert row["auc"] == pytest.approx(sk.roc_auc_score(y == c, p[:, c]))
        assert row["ap"] == pytest.approx(sk.average_precision_score(y == c, p[:, c]))
    expected = np.clip(np.floor(p @ np.arange(k) + 0.5), 0, k - 1)
    assert r["by_decision"]["expected"]["kappa"] == pytest.approx(
        sk.cohen_kappa_score(y, expected, weights="quadratic", labels=labels))


def test_a_class_without_images_is_left_out_of_the_aucs_and_macro_means_as_scikit_learn():
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.4, .5, .1], [.5, .4, .1]])
    r = sl.evaluate(np.eye(3)[y], p, ["a", "b", "never"], task="multiclass")
    assert r["undefined"] == [{"class": "never", "reason": "no images"}] and r["kappa"] is None
    assert r["macro_f1"] == pytest.approx(sk.f1_score(y, p.argmax(1), average="macro"))
    pair = (sk.roc_auc_score(y == 0, p[:, 0]) + sk.roc_auc_score(y == 1, p[:, 1])) / 2  # Hand & Till, the one pair
    assert r["auc_ovo"] == pytest.approx(pair)


def _corn_label_from_logits(logits):
    """coral_pytorch.dataset.corn_label_from_logits, transcribed to NumPy."""
    probas = np.cumprod(1 / (1 + np.exp(-logits)), axis=1)
    return np.sum(probas > 0.5, axis=1)


def _corn_probabilities(logits):
    survival = np.cumprod(1 / (1 + np.exp(-logits)), axis=1)
    return np.concatenate([1 - survival[:, :1], survival[:, :-1] - survival[:, 1:], survival[:, -1:]], axis=1)


def test_the_median_decision_is_corns_own_label_rule_and_the_corn_layer_its_probabilities(tmp_path):
    import keras

    from cxrlt.model import models, outputs

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (500, 4)).astype(np.float32)
    probs = _corn_probabilities(logits.astype(np.float64))
    assert (sl.decide(probs, "median") == _corn_label_from_logits(logits)).all()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, outputs.probabilities(inputs, "corn", 5))
    out = model.predict(logits, verbose=0)
    assert np.abs(out - probs).max() < 1e-5 and np.all(out >= 0) and np.abs(out.sum(1) - 1).max() < 1e-5
    models.save(model, tmp_path / "corn.keras")  # Keras' own layers only: passes the model-file allow-list
    assert np.abs(models.load(tmp_path / "corn.keras", num_classes=5).predict(logits, verbose=0) - out).max() < 1e-6


# --------------------------------------------------------------------------------------------- losses

def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _soft_labels(rng, n, k):
    y = np.eye(k)[rng.integers(0, k, n)]
    lam = rng.uniform(0, 1, (n, 1))
    return lam * y + (1 - lam) * np.eye(k)[rng.integers(0, k, n)]  # MixUp-style convex rows


def test_softmax_losses_match_keras_and_their_papers_formulas():
    import keras

    from cxrlt.model import losses_single

    rng = np.random.default_rng(0)
    n, k = 64, 5
    z = rng.normal(0, 2, (n, k)).astype(np.float32)
    y = _soft_labels(rng, n, k).astype(np.float32)
    counts = np.array([500, 120, 40, 9, 1])
    log_p = _log_softmax(z.astype(np.float64))

    ce = losses_single.get_loss("ce", label_smoothing=0.1)
    smoothed = y * 0.9 + 0.1 / k
    assert float(ce(y, z)) == pytest.approx(np.mean(-(smoothed * log_p).sum(1)), rel=1e-5)
    assert float(ce(y, z)) == pytest.approx(float(keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.1)(y, z)), rel=1e-5)

    focal = losses_single.get_loss("softmax_focal", gamma=2.0, alpha=0.25)
    reference = np.mean(-(0.25 * y * (1 - np.exp(log_p)) ** 2 * log_p).sum(1))
    assert float(focal(y, z)) == pytest.approx(reference, rel=1e-5)
    assert float(focal(y, z)) == pytest.approx(float(keras.losses.CategoricalFocalCrossentropy(
        alpha=0.25, gamma=2.0, from_logits=True)(y, z)), rel=1e-4)

    beta = 0.999
    effective = (1 - beta ** counts) / (1 - beta)            # Cui et al.: effective number of samples
    w = (1 / effective) / np.sum(1 / effective) * k          # weights inversely proportional, summing to K
    cb = losses_single.get_loss("class_balanced_ce", class_counts=counts, beta=beta)
    assert float(cb(y, z)) == pytest.approx(np.mean(-(w * y * log_p).sum(1)), rel=1e-5)

    prior = counts / counts.sum()                            # Menon et al.: softmax of f(x) + tau log pi
    la = losses_single.get_loss("logit_adjusted_ce", class_counts=counts, tau=1.5)
    adjusted = _log_softmax(z.astype(np.float64) + 1.5 * np.log(prior))
    assert float(la(y, z)) == pytest.approx(np.mean(-(y * adjusted).sum(1)), rel=1e-5)

    weights = rng.uniform(0, 1, n).astype(np.float32)        # per-image weights: a weighted mean
    per_image = -(smoothed * log_p).sum(1)
    assert float(ce(y, z, sample_weight=weights)) == pytest.approx(np.sum(per_image * weights) / weights.sum(), rel=1e-5)
    big = np.array([[100.0, -100.0, 0, 0, 0]], np.float32)  # extreme logits stay finite
    assert np.isfinite(float(focal(np.eye(k, dtype=np.float32)[[1]], big)))


def _corn_loss(logits, y_train, num_classes, weights=None):
    """coral_pytorch.losses.corn_loss transcribed to NumPy (with an optional weight per example)."""
    weights = np.ones(len(y_train)) if weights is None else weights
    logsig = lambda x: -np.logaddexp(0, -x)  # noqa: E731
    num_examples, losses = 0.0, 0.0
    for i in range(num_classes - 1):
        mask = y_train > i - 1
        if not mask.any():
            continue
        target = (y_train[mask] > i).astype(float)
        pred = logits[mask, i]
        num_examples += weights[mask].sum()
        losses += -np.sum(weights[mask] * (logsig(pred) * target + (logsig(pred) - pred) * (1 - target)))
    return losses / num_examples


def test_corn_loss_matches_the_reference_and_weighs_mixed_grades_as_weighted_copies():
    from cxrlt.model import losses_single

    rng = np.random.default_rng(1)
    k = 5
    y = np.array([0, 1, 2, 2, 2, 3, 4, 4])  # coral_pytorch's docstring example labels
    z = rng.normal(0, 2, (len(y), k - 1)).astype(np.float32)
    corn = losses_single.get_loss("corn")
    assert float(corn(np.eye(k, dtype=np.float32)[y], z)) == pytest.approx(_corn_loss(z.astype(np.float64), y, k), rel=1e-5)
    # a 25 % / 75 % mix of grades 1 and 4: the reference on the image copied once per grade, weighted by its share
    soft = np.eye(k, dtype=np.float32)[y]
    soft[0] = 0.25 * np.eye(k)[1] + 0.75 * np.eye(k)[4]
    copies_y = np.r_[1, 4, y[1:]]
    copies_z = np.vstack([z[:1], z[:1], z[1:]]).astype(np.float64)
    copies_w = np.r_[0.25, 0.75, np.ones(len(y) - 1)]
    assert float(corn(soft, z)) == pytest.approx(_corn_loss(copies_z, copies_y, k, copies_w), rel=1e-5)


def test_single_label_loss_names_are_in_step_with_the_schema():
    from cxrlt.config import schema
    from cxrlt.model import losses_single

    assert set(losses_single.LOSSES) == set(schema.SINGLE_LABEL_LOSSES) == set(schema.SINGLE_LABEL_LOSS_PARAMS)
    for name, (defaults, _) in losses_single.LOSSES.items():
        assert set(schema.SINGLE_LABEL_LOSS_PARAMS[name]) == set(defaults), name
    with pytest.raises(ConfigError, match="loss ce has no parameter loss.params.gama"):
        load_config(None, {"data": {"task": "multiclass"}, "loss": {"name": "ce", "params": {"gama": 2}}})


# ------------------------------------------------------------------------------------ sampling, mixing

LONG_TAIL = np.array([400, 150, 60, 25, 10, 5])


def _one_hot_tail() -> np.ndarray:
    return np.eye(len(LONG_TAIL), dtype=np.float32)[np.repeat(np.arange(len(LONG_TAIL)), LONG_TAIL)]


def test_balanced_mixup_pairs_an_instance_sampled_and_a_uniform_class_sampled_image():
    from cxrlt.data import sampling

    labels = _one_hot_tail()
    y = labels.argmax(1)
    inst, cls_side = (t.numpy() for t in sampling.balanced_pair_indices(labels, q_class=0.0, seed=7)
                      .batch(6000).take(1).get_single_element())
    k = len(LONG_TAIL)
    # class side: every class equally often (chi-squared against uniform); instance side: the class frequencies
    assert stats.chisquare(np.bincount(y[cls_side], minlength=k)).pvalue > 1e-3
    expected = LONG_TAIL / LONG_TAIL.sum() * len(inst)
    assert stats.chisquare(np.bincount(y[inst], minlength=k), expected).pvalue > 1e-3
    assert np.bincount(y[cls_side], minlength=k)[-1] > 10 * np.bincount(y[inst], minlength=k)[-1]


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_balanced_mixup_lambda_is_beta_alpha_1_on_the_class_side_with_convex_labels(alpha):
    import tensorflow as tf

    from cxrlt.data import mix

    mixer = mix.BalancedMixer(alpha, label_mode="convex", q=0.0, seed=3)
    lams = np.array([float(mixer.lam(step)) for step in range(500)])
    assert stats.kstest(lams, stats.beta(alpha, 1.0).cdf).pvalue > 1e-3
    assert lams.mean() == pytest.approx(alpha / (alpha + 1), abs=0.03)  # mostly the instance side
    k = 4
    x_i, x_c = tf.fill([8, 8, 8, 3], 10.0), tf.fill([8, 8, 8, 3], 200.0)
    y_i = tf.one_hot([0, 1, 2, 3, 0, 1, 2, 3], k)
    y_c = tf.one_hot([3, 3, 3, 3, 0, 0, 0, 0], k)
    x, y = mixer(5, (x_i, y_i), (x_c, y_c))
    lam = float(mixer.lam(5))
    assert np.allclose(x.numpy(), (1 - lam) * 10.0 + lam * 200.0, atol=1e-3)
    assert np.allclose(y.numpy(), (1 - lam) * y_i.numpy() + lam * y_c.numpy(), atol=1e-6)
    assert np.allclose(y.numpy().sum(1), 1.0)


def test_single_label_random_over_and_undersampling_balance_the_classes():
    from cxrlt.data import sampling_single

    labels = _one_hot_tail()
    y = labels.argmax(1)
    epoch = sampling_single.oversample_epoch(labels, seed=0)
    assert (np.bincount(y[epoch]) == LONG_TAIL.max()).all() and set(epoch) == set(range(len(y)))
    draws = sampling_single.oversample_epoch(labels, seed=1, epoch_size=6000)  # seed 000's weighted sampler
    assert len(draws) == 6000 and stats.chisquare(np.bincount(y[draws])).pvalue > 1e-3
    cut = sampling_single.undersample_epoch(labels, seed=2)
    assert (np.bincount(y[cut]) == LONG_TAIL.min()).all() and len(set(cut)) == len(cut)


def test_single_label_folds_are_stratified_and_never_split_a_patient():
    from cxrlt.data import folds

    table, _ = sl_data.read_table(need(FULLRES) / "images.csv", label_column="finding", image_root=FULLRES)
    fold = folds.make_folds(table, k=2, seed=0)
    for patient in np.unique(table.patients):
        assert len(set(fold[table.patients == patient])) == 1
    covid = table.labels[:, list(table.classes).index("COVID-19")] > 0
    assert abs(covid[fold == 0].sum() - covid[fold == 1].sum()) <= 12  # 90 COVID-19 images spread over 2 folds


# ---------------------------------------------------------------------------- the product path, end to end

@pytest.fixture(scope="session")
def single_label_run(tmp_path_factory):
    """A multiclass demo (60 patients, 32 px, MobileNetV2) trained 2 folds with Balanced-MixUp and Mosaic (convex
    labels), ensembled on its test list, scored by `cxrlt.evaluate` and reported: (root, submission, json)."""
    from cxrlt.ensemble import ensembler
    from cxrlt.evaluate import align
    from cxrlt.report import run_report
    from cxrlt.train import kfold

    root = tmp_path_factory.mktemp("single_label")
    argv = ["--demo-task", "multiclass", "--out", str(root / "runs"), "--name", "mc", "--epochs", "1",
            "--set", f"data.demo_dir={root / 'data'}", "--set", "data.demo_patients=60", "--set", "input.cache=true",
            "--backbone", "mobilenetv2", "--weights", "none", "--size", "32", "--folds", "2", "--batch-size", "8",
            "--set", "train.steps_per_epoch=3", "--set", "predict.batch_size=64", "--set", "train.verbose=0",
            "--set", "mix.balanced_mixup=0.2", "--set", "mix.mosaic=0.5", "--set", "predict.tta=[identity]"]
    assert kfold.main(argv) == 0
    out = root / "mc.csv"
    assert ensembler.main(["--runs", str(root / "runs" / "mc"), "--out", str(out)]) == 0
    scored = root / "scored.json"
    assert align.main(["--pred", str(out), "--labels", str(root / "data-multiclass" / "test.csv"),
                       "--json", str(scored)]) == 0
    run_report.build_report(root / "runs" / "mc", root / "report", gallery_n=0, with_preview=False)
    return root, out, scored


def test_a_multiclass_run_saves_an_explicit_config_and_one_column_per_class_plus_the_predicted_class(single_label_run):
    import yaml

    root, _, _ = single_label_run
    run = root / "runs" / "mc"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["task"] == "multiclass" and cfg["loss"]["name"] == "ce" and cfg["mix"]["label_mode"] == "convex"
    classes = json.loads((run / "classes.json").read_text())["classes"]
    assert json.loads((run / "classes.json").read_text())["task"] == "multiclass"
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["id", "fold", *classes, "predicted"]
    probs = oof[classes].to_numpy()
    assert np.abs(probs.sum(axis=1) - 1).max() < 1e-4  # softmax rows
    assert (oof["predicted"].to_numpy() == np.array(classes)[probs.argmax(axis=1)]).all()
    # the run's OOF scores are scikit-learn's on the file it wrote
    truth = pd.read_csv(root / "data-multiclass" / "train.csv").set_index("path").loc[oof["id"], "label"]
    y = np.array([classes.index(c) for c in truth])
    result = json.loads((run / "metrics.json").read_text())["oof"]
    assert result["mcc"] == pytest.approx(sk.matthews_corrcoef(y, probs.argmax(1)), abs=1e-9)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(y, probs.argmax(1)))


def test_a_multiclass_ensemble_averages_the_fold_probabilities_and_is_scored_by_evaluate(single_label_run):
    root, out, scored = single_label_run
    run = root / "runs" / "mc"
    classes = json.loads((run / "classes.json").read_text())["classes"]
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["path", *classes, "predicted"]
    folds = [pd.read_csv(f) for f in sorted((run / "predictions").glob("*/fold*.csv"))]
    assert len(folds) == 2
    mean = np.mean([f[classes].to_numpy() for f in folds], axis=0)
    mean /= mean.sum(axis=1, keepdims=True)
    assert np.abs(sub[classes].to_numpy() - mean).max() < 1e-5
    assert (sub["predicted"].to_numpy() == np.array(classes)[mean.argmax(axis=1)]).all()
    truth = pd.read_csv(root / "data-multiclass" / "test.csv").set_index("path").loc[sub["path"], "label"]
    y = np.array([classes.index(c) for c in truth])
    result = json.loads(scored.read_text())
    probs = sub[classes].to_numpy()
    assert result["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, probs.argmax(1)))
    assert result["confusion"] == sk.confusion_matrix(y, probs.argmax(1), labels=list(range(len(classes)))).tolist()
    present = sorted(set(y))
    if len(present) == len(classes):
        assert result["auc_ovo"] == pytest.approx(sk.roc_auc_score(y, probs, multi_class="ovo"))


def test_the_report_shows_the_confusion_matrix_and_the_per_class_table(single_label_run):
    import re

    root, _, _ = single_label_run
    run = root / "runs" / "mc"
    page = (root / "report" / "index.html").read_text()
    summary = json.loads((run / "metrics.json").read_text())["oof"]
    cells = dict(re.findall(r'<td data-metric="(oof/confusion/\d+/\d+)">([\d,]+)</td>', page))
    k = len(summary["confusion"])
    assert len(cells) == k * k
    for i in range(k):
        for j in range(k):
            assert int(cells[f"oof/confusion/{i}/{j}"].replace(",", "")) == summary["confusion"][i][j]
    for row in summary["per_class"]:
        recall = re.search(rf'data-metric="oof/per_class/{re.escape(row["class"])}/recall">([\d.]+)<', page)
        assert recall and float(recall.group(1)) == pytest.approx(row["recall"], abs=5e-5)
    assert 'id="confusion_matrix"' in page and "Single-label scores" in page


def test_single_label_training_batches_hold_distributions_over_the_classes(single_label_run):
    """Balanced-MixUp and Mosaic on the product path mix single labels convexly (by lambda, by area)."""
    import yaml

    from cxrlt.train import kfold

    root, _, _ = single_label_run
    cfg = yaml.safe_load((root / "runs" / "mc" / "config.yaml").read_text())
    table, _ = sl_data.read_table(cfg["data"]["labels"], task="multiclass", image_root=cfg["data"]["image_root"],
                                  classes=cfg["data"]["classes"])
    _, labels = kfold.sample_batch(cfg, table, seed=0, batch_size=8)
    labels = labels.numpy()
    assert np.allclose(labels.sum(axis=1), 1.0, atol=1e-5) and (labels >= 0).all()
    assert (labels.max(axis=1) < 1.0 - 1e-6).any()  # some rows are mixed, not one-hot
    assert math.isclose(float(labels.sum()), 8.0, rel_tol=1e-5)
