"""The report renders a trained run and a submission into valid PNGs and HTML whose numbers are the run's."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlt.evaluate import calibration, align as evaluate
from cxrlt.data import dataset
from cxrlt.report import run_report as report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


class StrictPage(HTMLParser):
    """Collects tagged numbers and data-URI images; fails on unclosed or mismatched tags."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.numbers, self.images = [], [], [], []
        self._key = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag not in VOID:
            self.stack.append(tag)
        for attr in ("data-metric", "data-report"):
            if attr in attrs:
                self._key, self._text = (attr, attrs[attr]), ""

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if self._key is not None and tag in ("td", "span"):
            self.numbers.append((*self._key, self._text.strip()))
            self._key = None

    def handle_data(self, data):
        if self._key is not None:
            self._text += data


def parse_page(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = StrictPage()
    page.feed(text)
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    assert "http://" not in text and "https://" not in text  # opens with no network
    return page


def lookup(tree, key: str):
    """'oof/per_class/Nodule/ap' in a metrics dict; list items are found by their 'class' or by index."""
    node = tree
    for part in key.split("/"):
        if isinstance(node, list):
            node = next((item for item in node if isinstance(item, dict) and item.get("class") == part), None) \
                if not part.isdigit() else node[int(part)]
        else:
            node = node[part]
    return node


def assert_numbers_match(numbers, attr, source: dict, minimum: int):
    checked = 0
    for kind, key, text in numbers:
        if kind != attr:
            continue
        expected = lookup(source, key)
        if expected is None:
            assert text == "n/a", key
        else:
            assert float(text.replace(",", "")) == pytest.approx(expected, abs=5.1e-5), key
        checked += 1
    assert checked >= minimum


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 200


def test_run_report_files_html_and_numbers(demo_run, tmp_path):
    root, _, _ = demo_run
    run_dir, out = root / "runs" / "demo", tmp_path / "report"
    assert report.main([str(run_dir), "--out", str(out), "--gallery", "4"]) == 0

    pngs = ["class_distribution", "ap_auc_per_class", "pr_curves", "reliability", "learning_curves", "gallery",
            "augmentations"]
    for name in pngs:
        assert_png(out / f"{name}.png")
    page = parse_page(out / "index.html")
    assert len(page.images) == len(pngs) and all(src.startswith("data:image/png;base64,") for src in page.images)

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert_numbers_match(page.numbers, "data-metric", summary, minimum=26 * 5 + 10)
    shown = json.loads((out / "report.json").read_text())
    assert_numbers_match(page.numbers, "data-report", shown, minimum=26 + 2)

    # The ECE on the page is the textbook definition applied to the run's oof.csv and training labels.
    train = dataset.read_labels(_train_csv(run_dir), classes=[r["class"] for r in summary["oof"]["per_class"]],
                                allow_outside_root=True)
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str}).set_index("id").loc[train.ids]
    probs = oof[list(train.classes)].to_numpy().ravel()
    truth = train.labels.ravel()
    bins = np.minimum((probs * 10).astype(int), 9)
    ece = sum(np.mean(bins == b) * abs(truth[bins == b].mean() - probs[bins == b].mean())
              for b in range(10) if (bins == b).any())
    assert shown["ece"]["pooled"] == pytest.approx(ece, abs=1e-6)  # float32 probabilities vs the float64 recomputation


def _train_csv(run_dir):
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["labels"]


def test_submission_report_has_the_per_class_parts_and_the_ensemble_numbers(demo_run, tmp_path):
    root, _, submission = demo_run
    out = tmp_path / "sub_report"
    test_csv = root / "data" / "test.csv"
    assert report.main([str(submission), "--labels", str(test_csv), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["ap_auc_per_class.png", "class_distribution.png", "pr_curves.png", "reliability.png"]
    page = parse_page(out / "index.html")
    # The page shows what `cxrlt.evaluate` computes for the same two files (the CSV on disk, rounded to 6
    # decimals, not the ensemble's in-memory probabilities: ties can move an AP in the 5th decimal).
    assert evaluate.main(["--pred", str(submission), "--labels", str(test_csv), "--json", str(tmp_path / "e.json")]) == 0
    assert_numbers_match(page.numbers, "data-metric", json.loads((tmp_path / "e.json").read_text()), minimum=26 * 5 + 4)


def test_report_refuses_what_it_cannot_use(demo_run, tmp_path, capsys):
    _, _, submission = demo_run
    assert_exit_2(lambda: report.main([str(submission), "--out", str(tmp_path / "a")]), capsys, "--labels")
    assert_exit_2(lambda: report.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]), capsys, "does not exist")
    assert not (tmp_path / "a").exists()


def assert_exit_2(call, capsys, words):
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_calibration_error_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.15, 0.8, 0.9, 1.0])  # bins 1, 1, 8, 9, 9 (p = 1 joins the last bin)
    # bin 1: conf 0.125, freq 0; bin 8: 0.8 vs 1; bin 9: 0.95 vs 1
    expected = 2 / 5 * 0.125 + 1 / 5 * 0.2 + 2 / 5 * 0.05
    assert calibration.expected_calibration_error(y, p) == pytest.approx(expected)
    assert calibration.expected_calibration_error(y, y.astype(float)) == 0.0
    both = calibration.multilabel_ece(np.stack([y, y], 1), np.stack([p, y.astype(float)], 1))
    assert both["classwise"] == pytest.approx(expected / 2) and both["per_class"][1] == 0.0
