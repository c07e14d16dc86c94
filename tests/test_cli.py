"""One command-line vocabulary (issue 27): every command refuses abbreviated flags and suggests the flag
it knows, takes --log-level, and `check` reads a CSV as `train` does."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlt.__main__ import COMMANDS
from cxrlt.data.classes import CXRLT2023


def _main(command: str):
    return importlib.import_module(COMMANDS[command][0]).main


def _flags(command: str, capsys) -> list[str]:
    """The --flags a command's own help lists."""
    with pytest.raises(SystemExit):
        _main(command)(["--help"])
    return re.findall(r"^  (--[a-z][a-z0-9-]+)", capsys.readouterr().out, flags=re.M)


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"bench"}))  # bench: subcommands, each its own parser
def test_an_abbreviated_flag_is_an_error_with_the_flag_it_meant(command, capsys):
    flags = _flags(command, capsys)
    flag = max((f for f in flags if f not in ("--log-level", "--tf-log")), key=len)
    short = flag[:-2]
    assert not any(f.startswith(short) for f in flags if f != flag)  # argparse took this as `flag` before
    with pytest.raises(SystemExit) as stop:
        _main(command)([short])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {short}" in err or "required" in err
    if "unrecognized" in err:
        assert f"{short}: did you mean {flag}?" in err


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"bench"}))
def test_every_command_takes_log_level_and_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as stop:
        _main(command)(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--log-level" in out, f"{command} has no --log-level"
    assert "(default: INFO)" in out  # every help shows its defaults


def test_check_refuses_what_train_refuses_a_csv_with_25_of_the_26_classes(tmp_path, capsys):
    """`check` used to read with --classes auto and pass a CSV that `train` then refused."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", **{c: int(rng.random() < 0.3) for c in CXRLT2023[:-1]}})
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)

    from cxrlt.data import dataset
    from cxrlt import config

    d = config.defaults()["data"]
    with pytest.raises(dataset.LabelFileError) as train_refusal:  # what train's resolve_data does with the defaults
        dataset.read_labels(csv, classes=d["classes"], edition=d["edition"], uncertain=d["uncertain"])
    with pytest.raises(SystemExit) as stop:
        _main("check")(["--labels", str(csv), "--out", str(tmp_path / "check.csv")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Tortuous Aorta" in err and "Tortuous Aorta" in str(train_refusal.value)
    # and with the class list named as for train, check passes it
    assert _main("check")(["--labels", str(csv), "--classes", "auto", "--out", str(tmp_path / "check.csv")]) == 0


def test_every_command_parses_with_cxrlt_parser():
    """The two rules above live in utils/cli.Parser: a command built on bare argparse would lose them."""
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "cxrlt"
    bare = [str(p.relative_to(package)) for p in package.rglob("*.py")
            if "argparse.ArgumentParser(" in p.read_text() and p.name != "cli.py"]
    assert bare == []


def test_the_set_example_in_train_help_is_a_setting_that_validates(capsys):
    from cxrlt import config

    with pytest.raises(SystemExit):
        _main("train")(["--help"])
    example = re.search(r"e\.g\. --set (\S+)=(\S+)", " ".join(capsys.readouterr().out.split())).groups()
    config.load(None, {example[0]: example[1]})  # raised ConfigError for loss.gamma


@pytest.mark.parametrize("command", ["report", "runs", "ensemble", "predict", "explain", "fuse", "aggregate"])
def test_every_command_that_takes_a_run_takes_dash_dash_run(command, capsys):
    assert "--run" in _flags(command, capsys)


def test_runs_and_ensemble_take_dash_dash_run_repeated(demo_run, tmp_path, capsys):
    from cxrlt.ensemble import ensembler

    root, _, submission = demo_run
    run = str(root / "runs" / "demo")
    assert _main("runs")(["--run", run, "--json"]) == 0
    assert '"name": "demo"' in capsys.readouterr().out
    assert _main("runs")(["--run", str(tmp_path)]) == 2  # not a run: one error line
    assert "not a run directory" in capsys.readouterr().err
    settings = ensembler.settings_from(ensembler._parser().parse_args(["--run", run, "--run", run]))
    assert settings["runs"] == [run, run]
