"""CXR-LT 2026 end to end on the demo in its layout: 16-bit PNGs with 12-bit values, 38-digit
patient ids, a Removal.csv naming a broken file; trained, ensembled into a submission in the
official order and checked against the sample header. One tiny run (32 px, 1 epoch, 2 folds)."""

import pandas as pd
import pytest

from cxrlt import config
from cxrlt.data import editions

from .conftest import TINY


def _cfg(root, *extra):
    from cxrlt.config import loader
    import argparse

    parser = argparse.ArgumentParser()
    loader.add_arguments(parser)
    args = parser.parse_args(["--demo-edition", "2026", "--set", f"data.demo_dir={root / 'data'}",
                              "--set", "data.demo_patients=20", "--set", "data.demo_image_size=48", *extra])
    return config.from_args(args)


def test_the_removal_list_is_applied_before_the_image_screen(tmp_path):
    from cxrlt.data import check
    from cxrlt.data.dataset import read_labels
    from cxrlt.train import kfold

    table = kfold.resolve_data(_cfg(tmp_path))  # the broken file is listed in Removal.csv: no screen error
    assert table.edition == "cxrlt2026-task1" and "broken_00000.png" not in table.ids
    assert len(set(table.patients)) == len(set(pd.read_csv(tmp_path / "data-cxrlt2026-task1" / "train.csv",
                                                           dtype=str).PatientID))  # as text: none merged
    with pytest.raises(check.ImageCheckError, match="broken_00000.png"):  # without the list the screen stops
        check.screen_table(read_labels(tmp_path / "data-cxrlt2026-task1" / "train.csv"), deep=False, skip_bad=False,
                           record_dir=tmp_path / "rec")


def test_cxrlt2026_demo_trains_and_submits_in_the_official_layout(tmp_path):
    from cxrlt import evaluate  # noqa: F401  (python -m cxrlt.evaluate)
    from cxrlt.ensemble import ensembler
    from cxrlt.evaluate import align
    from cxrlt.train import kfold

    root = tmp_path
    argv = ["--demo-edition", "2026", "--out", str(root / "runs"), "--name", "d26", "--epochs", "1",
            "--set", f"data.demo_dir={root / 'data'}", "--set", "data.demo_patients=20", *TINY]
    assert kfold.main(argv) == 0
    demo = root / "data-cxrlt2026-task1"
    out = root / "sub.csv"
    sample = demo / "test_sample_submission.csv"
    assert ensembler.main(["--runs", str(root / "runs" / "d26"), "--out", str(out), "--no-zip",
                           "--sample-submission", str(sample)]) == 0
    written = pd.read_csv(out, dtype={"ImageID": str})
    assert list(written.columns) == ["ImageID", *editions.CXRLT2026_TASK1]
    assert list(written.ImageID) == list(pd.read_csv(sample).ImageID)
    assert ensembler.main(["--check", str(out), "--runs", str(root / "runs" / "d26"),
                           "--labels", str(demo / "test.csv")]) == 0
    assert ensembler.main(["--check", str(out), "--sample-submission", str(sample)]) == 0
    assert align.main(["--pred", str(out), "--labels", str(demo / "test.csv")]) == 0
