"""cxrlt export: one SavedModel that scores like `cxrlt ensemble`, loaded where cxrlt is not imported.

The product path: the session's demo run (trained, ensembled into submissions/demo.csv by `cxrlt.ensemble`) is
exported with `python -m cxrlt export`; a fresh Python process that never imports cxrlt loads it with
tf.saved_model.load and scores the demo test images from their encoded bytes. The combination rules (mean, logit,
per-image rank, normal gating) are held against combine.py's NumPy in-process, without models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from cxrlt.ensemble import combine, ensembler, export
from cxrlt.runtime import runs

SERVE = textwrap.dedent("""
    import io, json, sys
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    model_dir, listing, out = sys.argv[1:4]
    paths = json.load(open(listing))
    data = [open(p, "rb").read() for p in paths]
    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures["serving_default"]
    result = serve(images=tf.constant(data))
    np.save(out + ".probabilities.npy", result["probabilities"].numpy())
    np.save(out + ".decisions.npy", result["decisions"].numpy())
    report = {}
    dicom = bytes(128) + b"DICM" + bytes(64)
    for name, bad in {"corrupt": b"these bytes are no image", "truncated": data[0][: len(data[0]) // 2],
                      "dicom": dicom}.items():
        try:
            serve(images=tf.constant([data[1], bad]))
            report[name] = "no error"
        except tf.errors.InvalidArgumentError as err:
            report[name] = err.message
    again = serve(images=tf.constant(data[2:4]))["probabilities"].numpy()  # the process still serves
    report["again"] = float(np.abs(again - result["probabilities"].numpy()[2:4]).max())
    grey = np.stack([np.asarray(Image.open(io.BytesIO(d)).convert("L").resize((96, 96)), np.float32) / 255.0
                     for d in data[:3]])[..., None]
    pngs = []
    for image in grey:
        buffer = io.BytesIO()
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    from_arrays = loaded.signatures["predict_grey"](images=tf.constant(grey))["probabilities"].numpy()
    from_pngs = serve(images=tf.constant(pngs))["probabilities"].numpy()
    report["grey_vs_png"] = float(np.abs(from_arrays - from_pngs).max())
    meta = loaded.signatures["metadata"]()
    report["classes"] = [c.decode() for c in meta["classes"].numpy()]
    report["edition"] = meta["edition"].numpy().decode()
    report["info"] = json.loads(meta["info"].numpy().decode())
    report["cxrlt_imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "cxrlt")
    json.dump(report, open(out + ".json", "w"))
""")


def test_the_export_scores_like_the_ensemble_in_a_process_without_cxrlt(demo_run, tmp_path, capsys):
    root, _, submission = demo_run
    run = runs.Run(root / "runs" / "demo")
    model_dir = tmp_path / "model"
    assert export.main(["--run", str(run.root), "--out", str(model_dir), "--thresholds", "oof"]) == 0
    assert "2 fold model(s)" in capsys.readouterr().out
    test = pd.read_csv(root / "data" / "test.csv", dtype={"dicom_id": str})
    listing = tmp_path / "images.json"
    listing.write_text(json.dumps([str(root / "data" / p) for p in test.path]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", SERVE, str(model_dir), str(listing), str(tmp_path / "served")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "served.json").read_text())
    assert report["cxrlt_imported"] == []

    classes = list(run.classes())
    assert report["classes"] == classes and report["edition"] == run.edition() == "cxrlt2023"
    expected = pd.read_csv(submission, dtype={"dicom_id": str}).set_index("dicom_id").loc[test.dicom_id, classes]
    probabilities = np.load(tmp_path / "served.probabilities.npy")
    np.testing.assert_allclose(probabilities, expected.to_numpy(), atol=1e-5, rtol=0)

    # decisions: the thresholds `cxrlt ensemble --thresholds oof` tunes, applied as its map to 0.5 would
    settings = {**ensembler.load_settings(None), "thresholds": "oof"}
    tuned = ensembler.out_of_fold([run], settings, "none", {})["tuned"]
    info = report["info"]
    np.testing.assert_allclose([info["thresholds"][c] for c in classes], tuned, atol=1e-12)
    np.testing.assert_array_equal(np.load(tmp_path / "served.decisions.npy"), (probabilities >= tuned).astype(int))

    assert "neither PNG nor JPEG" in report["corrupt"] and "index] [1]" in report["corrupt"]
    assert "Invalid JPEG data" in report["truncated"]
    assert "does not decode DICOM" in report["dicom"] and "predict_grey" in report["dicom"]
    assert report["again"] == 0.0
    assert report["grey_vs_png"] < 1e-5  # decoded arrays in, the same scores as their PNGs

    assert info["runs"][0]["config"] == run.config() and info["runs"][0]["folds"] == [0, 1]
    assert {"cxrlt", "tensorflow", "keras", "python"} <= set(info["versions"])
    assert json.loads((model_dir / "assets" / export.INFO_FILE).read_text())["classes"] == classes
    assert (model_dir / "assets" / export.CLASSES_FILE).read_text().split("\n")[:-1] == classes


def _fake_preds(seed: int, n: int = 40, c: int = 5):
    rng = np.random.default_rng(seed)
    preds = [rng.beta(0.5 + k, 2.0, (n, c)) for k in range(3)]
    preds[0][:5, 0] = preds[0][5, 0]  # ties in a reference and among the scores
    return preds


@pytest.mark.parametrize("method", ["mean", "logit", "rank"])
def test_the_graph_combines_runs_as_numpy_does(method):
    """combine_graph (what the SavedModel runs) against combine.py's NumPy rules, with normal gating; rank is
    scored per image: any batch gives each image the same value."""
    oof, test = _fake_preds(0), _fake_preds(1, n=17)
    weights = combine.weights_of(3, [2, 1, 1])
    references = [combine.rank_reference(p) for p in oof]
    expected = export.combine_numpy(test, weights, method, references)
    expected = combine.normal_gating(expected, ["No Finding", "a", "b", "c", "d"], 0.5)
    refs = [tuple(tf.constant(x) for x in r) for r in references]
    got = export.combine_graph([tf.constant(p) for p in test], weights, method, refs, 0.5, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    one_by_one = np.concatenate([export.combine_graph([tf.constant(p[i:i + 1]) for p in test], weights, method, refs,
                                                      0.5, 0).numpy() for i in range(17)])
    np.testing.assert_allclose(one_by_one, got, atol=1e-12)
    if method != "rank":
        np.testing.assert_allclose(export.combine_numpy(test, weights, method), combine.combine(test, weights, method))
    # the 2026 winner's power form of the gate, as ensemble --normal-gating-power
    plain = export.combine_numpy(test, weights, method, references)
    powered = combine.normal_gating(plain, ["No Finding", "a", "b", "c", "d"], 0.0, 0.5)
    got = export.combine_graph([tf.constant(p) for p in test], weights, method, refs, 0.0, 0, 0.5).numpy()
    np.testing.assert_allclose(got, powered, atol=1e-12)


def test_rank_per_image_orders_like_a_rank_average_and_keeps_one_runs_probabilities():
    oof, test = _fake_preds(2), _fake_preds(3, n=60)
    references = [combine.rank_reference(p) for p in oof]
    inside = np.clip(test[0], oof[0].min(axis=0), oof[0].max(axis=0))
    np.testing.assert_allclose(combine.reference_rank_average([inside], references[:1]), inside, atol=1e-12)
    per_image = combine.reference_rank_average(test, references)
    batch = combine.rank_average(test)
    for j in range(per_image.shape[1]):  # the same ranking as ranking the list against itself, near enough
        corr = np.corrcoef(np.argsort(np.argsort(per_image[:, j])), np.argsort(np.argsort(batch[:, j])))[0, 1]
        assert corr > 0.95, (j, corr)
    higher = [p.copy() for p in test]
    higher[1] = np.minimum(higher[1] + 0.05, 1.0)
    assert (combine.reference_rank_average(higher, references) >= per_image - 1e-12).all()  # monotone in each run


def test_export_refuses_what_it_cannot_build(demo_run, tmp_path, capsys):
    root, _, _ = demo_run
    half = tmp_path / "half"
    (half / "fold0").mkdir(parents=True)
    for name in ("config.yaml", "classes.json"):
        (half / name).write_bytes((root / "runs" / "demo" / name).read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--runs", str(half), "--out", str(tmp_path / "m"), "--method", "rank"])
    assert exit_info.value.code == 2 and "no finished fold to export" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.main(["--out", str(tmp_path / "m")])
    assert "name the runs to export" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
