"""What every command-line entry point shares: logging, quiet TensorFlow, and clean error exits.

Errors a user can fix (bad CSV, bad config, missing weights, a broken submission) print one
`error:` line naming the file and the fix, and exit with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from .errors import UserError  # noqa: F401 - cli.UserError, the name modules used first


def add_common(parser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--tf-log", action="store_true", help="show TensorFlow's own start-up and C++ logs")


def setup(args) -> None:
    if getattr(args, "tf_log", False):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
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
