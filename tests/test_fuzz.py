"""Property and fuzz tests (hypothesis): the label CSV reader, the label mixers, the metrics.

Example counts are modest: the mixers run real TensorFlow ops (eager), and CI has 2 cores.
"""

from __future__ import annotations

import csv
import io
import string

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrlt.evaluate import metrics
from cxrlt.data import mix
from cxrlt.data.dataset import LabelFileError, LabelTable, read_labels

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- the label CSV reader: a LabelTable or a LabelFileError, never anything else -------------------

ODD_CELLS = st.one_of(
    st.sampled_from(["", " ", "1.0", "0.0", "-1", "-1.0", " 1 ", "NaN", "nan", "NA", "n/a", "yes", "true", "2",
                     "0.5", "inf", "-0", "1e0", "x.png", "../up.png", "/abs/c.png", '"', '""', "a,b", "é",
                     "\u00a0", "\t", "line\nbreak"]),
    st.text(alphabet=string.printable + "éß中\u00a0\u2028", max_size=8),
)
LABEL_CELLS = st.one_of(st.sampled_from(["0", "1"]), st.sampled_from(["0", "1"]), ODD_CELLS)
PATH_CELLS = st.one_of(st.integers(0, 30).map(lambda i: f"img{i}.png"),
                       st.integers(0, 30).map(lambda i: f"files/p10/p1000000{i % 10}/s5{i:07d}/d{i}.jpg"),
                       ODD_CELLS)
HEADERS = st.sampled_from(["fpath", "dicom_id", "patient_id", "subject_id", "study_id", "ViewPosition",
                           "A", "B", "C", "No Finding", "", "path ", "A", "note", "1", "Unnamed: 0"])
PATHISH = {"path", "fpath", "dicom_id", "patient_id", "subject_id", "study_id"}


@st.composite
def csv_text(draw):
    """Mostly well-formed label files with odd cells; sometimes structurally broken ones."""
    header = draw(st.lists(HEADERS, min_size=0, max_size=5, unique=draw(st.integers(0, 5)) > 0))
    if draw(st.integers(0, 4)):
        header.insert(draw(st.integers(0, len(header))), "path")
    header = header or ["path"]
    rows = []
    for _ in range(draw(st.integers(0 if not draw(st.integers(0, 9)) else 1, 6))):
        row = [draw(PATH_CELLS if h.strip() in PATHISH else LABEL_CELLS) for h in header]
        if not draw(st.integers(0, 29)):  # now and then a field too few or too many
            row = row[:-1] if draw(st.booleans()) else [*row, draw(ODD_CELLS)]
        rows.append(row)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    if draw(st.integers(0, 5)):  # properly quoted
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=newline).writerows([header, *rows])
        text = buffer.getvalue()
    else:  # naive join: quotes and commas inside cells break the structure
        text = newline.join(",".join(r) for r in [header, *rows]) + newline
    return text + draw(st.sampled_from(["", newline, ",,," + newline]))


READ_OPTIONS = st.fixed_dictionaries({
    "classes": st.sampled_from(["auto", None, ["A", "B"], ["A"], "nih14"]),
    "uncertain": st.sampled_from(["error", "zero", "one", "ignore"]),
    "require_labels": st.booleans(),
    "allow_outside_root": st.booleans(),
})


def _read_or_refuse(path, options):
    try:
        table = read_labels(path, **options)
    except LabelFileError as err:
        assert str(path) in str(err) or "--uncertain" in str(err) or "schema" in str(err)
        return None
    assert isinstance(table, LabelTable)
    n = len(table)
    assert n > 0 and len(table.paths) == len(table.patients) == len(table.studies) == n
    assert len(set(table.ids)) == n  # ids unique
    if table.labels is not None:
        assert table.labels.shape == (n, len(table.classes)) and table.labels.dtype == np.float32
        assert set(np.unique(table.labels)) <= {0.0, 1.0}
    if table.mask is not None:
        assert options["uncertain"] == "ignore" and table.mask.shape == table.labels.shape
    return table


@settings(FUZZ, max_examples=300)
@given(text=csv_text(), options=READ_OPTIONS)
def test_reader_on_random_csv_text(tmp_path, text, options):
    path = tmp_path / "fuzz.csv"
    path.write_text(text, encoding="utf-8")
    _read_or_refuse(path, options)


@settings(FUZZ, max_examples=150)
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"path,A\n", b"\xef\xbb\xbfpath,A\nx.png,"]),
       options=READ_OPTIONS)
def test_reader_on_random_bytes(tmp_path, data, prefix, options):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(prefix + data)
    _read_or_refuse(path, options)


def test_reader_fuzz_reaches_both_outcomes(tmp_path):
    """Guard against a fuzzer that only ever produces errors (which would prove little)."""
    path = tmp_path / "l.csv"
    path.write_text("path,A,B\nx.png,1,0\ny.png,-1,1\n")
    assert _read_or_refuse(path, {"classes": "auto", "uncertain": "zero", "require_labels": True,
                                  "allow_outside_root": False}) is not None
    assert _read_or_refuse(path, {"classes": "auto", "uncertain": "error", "require_labels": True,
                                  "allow_outside_root": False}) is None


# --- the label mixers ------------------------------------------------------------------------------

OPS = {
    "mosaic_crop": mix.mosaic_crop,
    "mosaic_resize": mix.mosaic_resize,
    "mixup": mix.mixup,
    "cutmix": mix.cutmix,
}


@st.composite
def batches(draw, min_batch=2):
    b = draw(st.integers(min_batch, 6))
    c = draw(st.integers(1, 5))
    size = draw(st.sampled_from([8, 9, 13, 16]))  # odd sizes too: Mosaic needs no divisibility
    labels = np.array(draw(st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=c, max_size=c),
                                    min_size=b, max_size=b)), np.float32)
    seed = draw(st.tuples(st.integers(0, 2 ** 31 - 1), st.integers(0, 2 ** 31 - 1)))
    images = np.random.default_rng(seed[0]).uniform(0, 255, (b, size, size, 3)).astype(np.float32)
    return images, labels, seed


@settings(FUZZ, max_examples=40)
@given(batch=batches(min_batch=4), name=st.sampled_from(sorted(OPS)), mode=st.sampled_from(["clip_sum", "convex"]))
def test_mixed_labels_stay_in_0_1_and_follow_their_rule(batch, name, mode):
    images, labels, seed = batch
    out, y, info = OPS[name](tf.constant(images), tf.constant(labels), list(seed), label_mode=mode, return_info=True)
    assert out.shape == images.shape and out.dtype == tf.float32 and y.shape == labels.shape
    out, y = out.numpy(), y.numpy()
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 255.0 + 1e-3
    assert y.min() >= 0.0 and y.max() <= 1.0
    sources, weights = info["sources"].numpy(), info["weights"].numpy()  # [k, B]
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-5)  # the convex weights of each output sum to 1
    assert (weights >= 0).all()
    for i in range(len(labels)):
        if mode == "clip_sum":  # the union of the sources that are in the image
            used = [s for s, w in zip(sources[:, i], weights[:, i]) if w > 0]
            np.testing.assert_array_equal(y[i], labels[used].max(axis=0))
        else:
            np.testing.assert_allclose(y[i], (weights[:, i, None] * labels[sources[:, i]]).sum(axis=0), atol=1e-5)


@settings(FUZZ, max_examples=25)
@given(batch=batches(min_batch=4), p=st.lists(st.floats(0, 1 / 3), min_size=3, max_size=3),
       cutout=st.floats(0, 1), mode=st.sampled_from(["clip_sum", "convex"]))
def test_batch_mixer_keeps_shapes_and_label_range(batch, p, cutout, mode):
    images, labels, seed = batch
    mixer = mix.BatchMixer(mosaic=p[0], mixup=p[1], cutmix=p[2], cutout=cutout, label_mode=mode, seed=seed[0])
    x, y = mixer(tf.constant(seed[1] % 1000, tf.int64), tf.constant(images), tf.constant(labels))
    assert x.shape == images.shape and y.shape == labels.shape
    y = y.numpy()
    assert y.min() >= 0.0 and y.max() <= 1.0
    if mode == "clip_sum":
        assert set(np.unique(y)) <= {0.0, 1.0}  # a union of 0/1 labels is 0/1


@settings(FUZZ, max_examples=40)
@given(k=st.integers(1, 4), b=st.integers(1, 5), c=st.integers(1, 4), data=st.data())
def test_combine_labels_clip_sum_is_the_union_and_convex_a_weighted_mean(k, b, c, data):
    ys = [np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=c, max_size=c),
                                      min_size=b, max_size=b)), np.float32) for _ in range(k)]
    share = st.floats(0, 1, width=32, allow_subnormal=False)  # TF on CPU flushes subnormal shares to 0
    ws = [np.array(data.draw(st.lists(share, min_size=b, max_size=b)), np.float32) for _ in range(k)]
    union = mix.combine_labels(ys, ws, "clip_sum").numpy()
    present = np.stack([w > 0 for w in ws])[..., None]  # [k, B, 1]
    np.testing.assert_array_equal(union, (np.stack(ys) * present).max(axis=0))
    convex = mix.combine_labels(ys, ws, "convex").numpy()
    total = np.stack(ws).sum(axis=0)[:, None]
    expected = np.where(total > 0, (np.stack(ws)[..., None] * np.stack(ys)).sum(axis=0) / np.where(total > 0, total, 1),
                        (np.stack(ws)[..., None] * np.stack(ys)).sum(axis=0))
    np.testing.assert_allclose(convex, expected, atol=1e-5)
    assert convex.min() >= 0 and convex.max() <= 1 + 1e-6


# --- the metrics -----------------------------------------------------------------------------------

@st.composite
def scored(draw):
    n = draw(st.integers(2, 40))
    c = draw(st.integers(1, 4))
    y = np.array(draw(st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=c, max_size=c), min_size=n, max_size=n)))
    grid = draw(st.sampled_from([None, 3, 11]))  # None: continuous scores; else ties on a coarse grid
    scores = st.floats(0, 1) if grid is None else st.integers(0, grid - 1).map(lambda v: v / (grid - 1))
    p = np.array(draw(st.lists(st.lists(scores, min_size=c, max_size=c), min_size=n, max_size=n)))
    return y, p


@settings(FUZZ, max_examples=80)
@given(yp=scored(), seed=st.integers(0, 2 ** 16))
def test_metrics_agree_with_scikit_learn_are_bounded_and_order_free(yp, seed):
    y, p = yp
    names = [f"c{j}" for j in range(y.shape[1])]
    result = metrics.evaluate(y, p, names)
    for j, row in enumerate(result["per_class"]):
        defined = 0 < y[:, j].sum() < len(y)
        assert (row["ap"] is not None) == defined
        if defined:
            assert row["ap"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-9)
            assert row["auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-9)
            assert 0 <= row["ap"] <= 1 and 0 <= row["auc"] <= 1 and 0 <= row["f1"] <= 1
            assert row["ap"] >= y[:, j].mean() - 1e-9 or row["auc"] < 1  # AP of a perfect ranking is 1
    rng = np.random.default_rng(seed)
    rows, cols = rng.permutation(len(y)), rng.permutation(y.shape[1])
    shuffled = metrics.evaluate(y[rows][:, cols], p[rows][:, cols], [names[j] for j in cols])
    for key in ("mAP", "mAUC", "mF1"):
        if result[key] is None:
            assert shuffled[key] is None
        else:
            assert shuffled[key] == pytest.approx(result[key], abs=1e-12) and 0 <= result[key] <= 1
    by_name = {r["class"]: r for r in shuffled["per_class"]}
    for row in result["per_class"]:
        assert by_name[row["class"]]["ap"] == (None if row["ap"] is None else pytest.approx(row["ap"], abs=1e-12))
