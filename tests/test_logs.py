"""Quiet by default: TensorFlow's start-up lines filtered, progress without carriage-return floods."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time

from cxrlt.utils import tfquiet
from cxrlt.utils.progress import Progress

from .conftest import REPO

ABSL_INFO = ("I0000 00:00:1795432262.975105    6620 port.cc:153] oneDNN custom operations are on. You may see "
             "slightly different numerical results.\n")


def test_filter_keeps_errors_and_python_output_and_drops_what_the_level_hides():
    text = (tfquiet.BANNER + "\n" + ABSL_INFO
            + "I0000 00:00:1.1    1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
            + "To enable the following instructions: AVX2, rebuild TensorFlow.\n"
            + "W0000 00:00:1.2    1 computation_placer.cc:177] computation placer already registered.\n"
            + "E0000 00:00:1.3    1 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"
            + "/x/y.py:3: UserWarning: a Python warning during import\n"
            + "2024-08-10 09:16:11.569780: I tensorflow/core/util/port.cc:153] old-style oneDNN line\n")
    kept = tfquiet.filter_log(text, min_level=2)
    assert kept == ("E0000 00:00:1.3    1 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"
                    "/x/y.py:3: UserWarning: a Python warning during import\n")
    assert "computation placer" in tfquiet.filter_log(text, min_level=1)
    assert tfquiet.filter_log(text, min_level=0) == text


def test_importing_tensorflow_through_cxrlt_prints_nothing():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = "import cxrlt, tensorflow as tf; print(int(tf.constant(2) + 1))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "3"
    assert done.stderr == ""  # without the filter: the absl banner and "oneDNN custom operations are on", twice


def test_tf_log_flag_turns_the_filter_off(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        tfquiet.install(["train", "--tf-log"])
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
        assert not any(isinstance(f, tfquiet._QuietTensorFlowImport) for f in sys.meta_path)
    finally:
        tfquiet.uninstall()


def test_progress_logs_quarters_off_a_terminal(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="cxrlt.progress"):
        with Progress(1000, "predict", stream=stream, is_tty=False) as bar:
            for _ in range(100):
                bar.add(10)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[-1].startswith("predict: 1000/1000 images")
    assert stream.getvalue() == ""


def test_progress_redraws_one_line_on_a_terminal(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="cxrlt.progress"):
        with Progress(3, "ensemble", unit="fold", stream=stream, is_tty=True) as bar:
            for _ in range(3):
                bar.add(1)
    text = stream.getvalue()
    assert text.startswith("\rensemble [") and text.endswith("\n") and text.count("\n") == 1
    assert "3/3 folds" in text and not caplog.records
    with caplog.at_level(logging.WARNING, logger="cxrlt.progress"):  # --log-level WARNING: no bar at all
        quiet = io.StringIO()
        with Progress(3, "ensemble", stream=quiet, is_tty=True) as bar:
            bar.add(3)
    assert quiet.getvalue() == ""


def test_a_log_line_ends_a_half_drawn_bar_first(caplog):
    """A bar on the terminal and a log record used to share one line: '...(3.0 s, 36 images/s)20:17:33 INFO ...'."""
    from cxrlt.utils.progress import EndBarLine

    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)
    handler.addFilter(EndBarLine())
    logger = logging.getLogger("cxrlt.test_progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="cxrlt.progress"):
        with Progress(4, "predict", stream=terminal, is_tty=True) as bar:
            time.sleep(0.15)  # the bar redraws at most ten times a second
            bar.add(2)
            assert terminal.getvalue().startswith("\rpredict [") and "2/4 images" in terminal.getvalue()
            logger.info("LOG-LINE")
            bar.add(2)
        logger.info("AFTER")
    logger.removeHandler(handler)
    lines = terminal.getvalue().split("\n")
    assert "LOG-LINE" in lines and "AFTER" in lines  # each on a line of its own
    assert lines[-1] == "" and "\rpredict [" in lines[lines.index("LOG-LINE") + 1]  # redrawn below it
