"""One base for every error a user can fix (a bad CSV, setting, image, run folder, submission, a full disk).

Every command catches UserError and prints it as one `error:` line naming the file and the fix (exit 2);
anything else is a bug and keeps its traceback. A new module's error class subclasses UserError and is
caught everywhere without being registered."""


class UserError(ValueError):
    """Base of errors the user can fix; the message says what and where, and what to do."""
