"""What every command-line entry point shares: logging, quiet TensorFlow, and clean error exits.

Errors a user can fix (bad CSV, bad config, missing weights, a broken submission) print one
`error:` line naming the file and the fix, and exit with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
import warnings

from .errors import UserError  # noqa: F401 - cli.UserError, the name modules used first


class Parser(argparse.ArgumentParser):
    """argparse with the two things every cxrlt command wants: no abbreviated flags (`--epoch 1` was
    silently taken as `--epochs 1`) and a did-you-mean for an unknown flag, like every setting has."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            hints = []
            for arg in message.split(":", 1)[1].split():
                flag = arg.split("=", 1)[0]
                if flag.startswith("--"):
                    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
                    if close:
                        hints.append(f"{flag}: did you mean {close[0]}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        super().error(message)


class HelpFormatter(argparse.HelpFormatter):
    """Every help line shows its default (argparse's ArgumentDefaultsHelpFormatter, minus the noise of
    'default: None' and 'default: False' on flags that have no default to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS, [])
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def parser(prog: str, doc: str | None, **kwargs) -> Parser:
    """The parser of one command: `prog` as the user types it, the first line of the module docstring."""
    return Parser(prog=prog, description=(doc or "").split("\n")[0], **kwargs)


def add_common(parser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much cxrlt logs to stderr")
    parser.add_argument("--tf-log", action="store_true", help="show TensorFlow's own start-up and C++ logs")


def setup(args) -> None:
    if getattr(args, "tf_log", False):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .progress import EndBarLine

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, EndBarLine) for f in handler.filters):
            handler.addFilter(EndBarLine())
    logging.captureWarnings(True)
    warnings.filterwarnings("once")  # one copy of each warning, not one per batch
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # library internals, not actionable here
    if not getattr(args, "tf_log", False):
        for name in ("tensorflow", "absl", "h5py"):
            logging.getLogger(name).setLevel(logging.ERROR)


def user_errors() -> tuple[type[BaseException], ...]:
    """What a command prints as one line: every UserError (utils/errors.py), and a missing file."""
    return (UserError, FileNotFoundError)


@contextlib.contextmanager
def errors():
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
        if isinstance(err, user_errors()):
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
