"""Settings: package defaults (defaults.yaml) <- --config FILE <- --set / named flags, one schema of every
setting's type, allowed values and range (schema.py), and the resolved config a run saves.

Validating a config imports no TensorFlow: `cxrlt.config.load(path)` is cheap enough for any command."""

from .loader import (DEFAULTS_FILE, FLAGS, FREEFORM, NULLABLE, add_arguments, defaults, diff, dump, flatten,
                     from_args, get_dotted, load, merge, read_mapping, set_dotted, validate, with_run_name)
from .schema import ConfigError

__all__ = ["DEFAULTS_FILE", "FLAGS", "FREEFORM", "NULLABLE", "ConfigError", "add_arguments", "defaults", "diff",
           "dump", "flatten", "from_args", "get_dotted", "load", "merge", "read_mapping", "set_dotted", "validate",
           "with_run_name"]
