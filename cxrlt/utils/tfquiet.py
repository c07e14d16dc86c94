"""Quiet TensorFlow's start-up noise by default, without touching what it computes.

Why TF_CPP_MIN_LOG_LEVEL alone no longer does it (TF 2.21, traced with gdb and LD_DEBUG):
TensorFlow logs through Abseil now. While `import tensorflow` loads libtensorflow_framework.so.2,
its static initialiser (threadpool_device.cc) calls IsMklEnabled(), which logs "oneDNN custom
operations are on" at INFO level before TensorFlow has applied TF_CPP_MIN_LOG_LEVEL; Abseil, not
initialised yet (absl::InitializeLog), writes every such message to stderr behind its "WARNING: All
log messages before absl::InitializeLog() is called are written to STDERR" banner. The profiler
plugin (_pywrap_profiler_plugin.so) carries its own copy of both, so the pair appears twice.
TF_ENABLE_ONEDNN_OPTS=0 would silence the line by switching oneDNN off, which changes the numerics:
not an option.

What this module does instead: while `tensorflow` is imported for the first time, file descriptor 2
points at a temporary file. Afterwards the lines that TF_CPP_MIN_LOG_LEVEL would have removed (log
records below that level, and the banner) are dropped and everything else goes to the real stderr,
in order. If the import fails, everything captured is passed through unfiltered.

`install()` runs when cxrlt is imported. TF_CPP_MIN_LOG_LEVEL defaults to 2 (errors only);
`--tf-log` on the command line, or TF_CPP_MIN_LOG_LEVEL=0 in the environment, shows everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
DEFAULT_LEVEL = "2"
# Abseil: "I0000 00:00:1795432262.975105    6620 port.cc:153] ..."; older TSL: "2024-08-10 09:16:11.569780: I tensorflow/...:153] ..."
_RECORD = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
                     r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) \S+:\d+\])")
# Python's own output is never taken for the continuation of a C++ record.
_PYTHON_LINE = re.compile(r"^(?:Traceback |\s+File \"|\S+\.py:\d+: \w+(?:Warning|Error)\b)")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def filter_log(text: str, min_level: int) -> str:
    """`text` without the records TF_CPP_MIN_LOG_LEVEL=`min_level` drops (a record's continuation lines go with it)."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        if bare == BANNER:
            dropping = min_level > 0
            if not dropping:
                kept.append(line)
            continue
        record = _RECORD.match(bare)
        if record:
            dropping = _SEVERITY[record.group(1) or record.group(2)] < min_level
        elif _PYTHON_LINE.match(bare) or not bare.strip():
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def filtered_stderr(min_level: int):
    """Route fd 2 through `filter_log` for the duration of the block (C++ and Python writes alike)."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            text = text if failed else filter_log(text, min_level)
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()


class _FilteringLoader(importlib.abc.Loader):
    def __init__(self, loader, min_level: int):
        self.loader, self.min_level = loader, min_level

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with filtered_stderr(self.min_level):
            self.loader.exec_module(module)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of `tensorflow`, once, in `filtered_stderr`."""

    def __init__(self, min_level: int):
        self.min_level = min_level

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _FilteringLoader(spec.loader, self.min_level)
        return spec


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]


def tf_log_requested(argv=None) -> bool:
    return "--tf-log" in (sys.argv if argv is None else argv)


def install(argv=None) -> None:
    """Default TF_CPP_MIN_LOG_LEVEL to 2 and filter the first `import tensorflow`; `--tf-log` turns both off."""
    if tf_log_requested(argv):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        uninstall()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL)
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        return
    if level <= 0 or "tensorflow" in sys.modules:
        return
    uninstall()
    sys.meta_path.insert(0, _QuietTensorFlowImport(level))
