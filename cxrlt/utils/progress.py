"""One progress bar per phase of a long job outside `fit` (predict, ensemble, report, explain, prepare).

On an interactive terminal: a single line redrawn in place on stderr, at most ten times a second.
Anywhere else (CI, a pipe, a log file, CI=true): a plain log line at each quarter, so logs hold a few
readable lines and never megabytes of carriage returns. `--log-level WARNING` hides both. Keras keeps
its own bar inside `fit`.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("cxrlt.progress")
_drawn: "Progress | None" = None  # the bar whose line is on the terminal, not yet ended


class EndBarLine(logging.Filter):
    """On the handlers cli.setup installs: a log record ends a half-drawn bar's line first, so the two
    never share one terminal line; the bar redraws below it at its next update."""

    def filter(self, record: logging.LogRecord) -> bool:
        global _drawn
        if _drawn is not None:
            _drawn.stream.write("\n")
            _drawn.stream.flush()
            _drawn = None
        return True


def interactive(stream=None) -> bool:
    """A terminal a person watches: stderr is a TTY and no CI variable is set."""
    stream = stream or sys.stderr
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """`with Progress(n, "fold 0 OOF") as bar: ... bar.add(k)`; `close()` ends the line/logs the total."""

    def __init__(self, total: int, label: str, unit: str = "image", *, stream=None, is_tty: bool | None = None,
                 logger: logging.Logger | None = None, quarters: int = 4):
        self.total, self.label, self.unit, self.done = int(total), label, unit, 0
        self.log = logger or log
        self.stream = stream or sys.stderr
        self.started = self._last_draw = time.monotonic()
        self.quarter, self.quarters, self.closed = 1, quarters, False
        shown = self.log.isEnabledFor(logging.INFO)
        self.tty = shown and (interactive(self.stream) if is_tty is None else is_tty)
        self.lines = shown and not self.tty

    def add(self, n: int = 1) -> None:
        self.done += int(n)
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done >= self.total:
                self._draw()
                self._last_draw = now
        elif self.lines and self.total:
            crossed = False
            while self.quarter <= self.quarters and self.done * self.quarters >= self.quarter * self.total:
                self.quarter, crossed = self.quarter + 1, True
            if crossed:
                self.log.info("%s: %d/%d %ss (%s)", self.label, self.done, self.total, self.unit, self._elapsed())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.tty:
            global _drawn
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            _drawn = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _elapsed(self) -> str:
        seconds = time.monotonic() - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        return f"{seconds:.1f} s, {rate:.1f} {self.unit}s/s"

    def _draw(self) -> None:
        width = 30
        filled = int(width * min(self.done, self.total) / self.total) if self.total else width
        bar = "=" * filled + (">" if filled < width else "") + "." * max(0, width - filled - 1)
        global _drawn
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {self.unit}s ({self._elapsed()})\x1b[K")
        self.stream.flush()
        _drawn = self
