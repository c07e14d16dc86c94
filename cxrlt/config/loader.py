"""YAML config + command-line overrides -> one resolved, validated config (a plain nested dict).

Order, as in big_vision/timm: package defaults (defaults.yaml) <- --config FILE <- --set k=v and
named flags. Unknown keys fail with a did-you-mean; values must keep the type of their default.
The resolved config is saved in the run directory, and a run refuses a different config unless
--force.
"""

from __future__ import annotations

import argparse
import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from . import schema
from .schema import ConfigError

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")




def defaults() -> dict:
    return yaml.safe_load(DEFAULTS_FILE.read_text())


# Settings whose value is a free-form mapping (checked by the component that takes them).
FREEFORM = {"loss.params", "predict.view_weights"}
# Settings whose default is null, and the type a value must have.
NULLABLE = {"name": str, "data.labels": str, "data.image_root": str, "data.test_labels": str,
            "data.test_image_root": str, "train.steps_per_epoch": int,
            "train.steps_per_execution": int, "model.init": str, "model.csra_temperatures": list,
            "optim.head_weight_decay": float, "optim.head_warmup_lr": float, "data.label_column": str}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; FREEFORM sections (a loss's params) stay one value."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in FREEFORM:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    section = [k for k in known if k.startswith(key + ".")]
    if section:  # `input: 5` where `input:` is a section
        return ConfigError(f"{where}: {key} is a section, not a value; set its keys ({', '.join(section[:4])}"
                           f"{', ...' if len(section) > 4 else ''})")
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown setting {key!r}{hint}")


def _coerce(key: str, value: Any, default: Any, where: str) -> Any:
    """Keep each value the type of its default; strings from the command line are parsed as YAML."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = (_number(value) if (isinstance(default, (int, float)) and not isinstance(default, bool))
                     or NULLABLE.get(key) in (int, float) else yaml.safe_load(value))
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: {key}={value!r} is not a valid value ({_yaml_problem(err)})") from None
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = yaml.safe_load(value)  # a list given on the command line, e.g. data.classes=[A, B]
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: {key}={value!r} is not a valid list ({_yaml_problem(err)})") from None
    if default is None:
        kind = NULLABLE.get(key)
        if value is None or kind is None:
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is list and isinstance(value, list):
            return value
        if kind is str and isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{where}: {key} must be {kind.__name__} or null, got {value!r}")
    if value is None:
        raise ConfigError(f"{where}: {key} cannot be empty (null); its default is {default!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, str) and isinstance(value, (str, int)) and not isinstance(value, bool):
        return int(value) if isinstance(value, str) and value.isdigit() and key == "train.fold" else value
    if isinstance(value, list) and isinstance(default, (list, str)):
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return value
    if type(value) is type(default):
        return value
    raise ConfigError(f"{where}: {key} must be {type(default).__name__} like its default {default!r}, got {value!r}")


def _parsed_value(key: str, text: str, where: str):
    """A free-form parameter's text as a number or YAML value, any YAML error (a syntax slip, or a
    tag such as !!python/name:os.system that safe_load refuses) as a ConfigError naming the setting:
    the command line prints it as one `error:` line, not a yaml traceback."""
    try:
        return _number(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: {key}={text!r} is not a valid value ({_yaml_problem(err)}); give a number, "
                          "true/false, a string or a [list] (YAML tags such as !!python/... are refused)") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message without its multi-line source excerpt: a command-line error stays one line."""
    problem = getattr(err, "problem", None)
    context = getattr(err, "context", None)
    text = "; ".join(str(part) for part in (context, problem) if part) or str(err).strip()
    return " ".join(text.split())


def _number(text: str):
    """'1e-3' is a float to a user, though YAML 1.1 reads it as a string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def merge(base: dict, override: dict, where: str) -> dict:
    """Apply `override` (nested or dotted keys) to a copy of `base`, checking names and types."""
    out = copy.deepcopy(base)
    flat_known = flatten(base)
    flat_override = flatten(override)
    for key, value in flat_override.items():
        section = next((f for f in FREEFORM if key.startswith(f + ".")), None)
        if section is not None and key not in flat_known:  # --set loss.params.gamma=1.5: one argument of the section
            value = {key[len(section) + 1:]: value}
            key = section
        if key not in flat_known:
            # A section given as a whole value (e.g. data.classes: [list]) is a leaf, not a section.
            head = key.rsplit(".", 1)[0]
            if head in flat_known and isinstance(flat_known[head], (list, type(None))):
                continue
            raise _unknown(key, list(flat_known), where)
        if key in FREEFORM and isinstance(value, dict):  # update, so one argument can be changed alone
            parsed = {k: _parsed_value(f"{key}.{k}", v, where) if isinstance(v, str) else v for k, v in value.items()}
            owner = key.rsplit(".", 1)[0] + ".name"  # params of another loss start empty, not from the old one's
            renamed = flat_override.get(owner, flat_known.get(owner)) != flat_known.get(owner)
            set_dotted(out, key, parsed if renamed else {**get_dotted(out, key), **parsed})
            continue
        set_dotted(out, key, _coerce(key, value, flat_known[key], where))
    for key, value in override.items():  # whole-list leaves written as nested dicts stay as given
        if key in flat_known and isinstance(value, list):
            set_dotted(out, key, value)
    return out


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def get_dotted(tree: dict, key: str) -> Any:
    node = tree
    for part in key.split("."):
        node = node[part]
    return node


def read_mapping(path: Path, *, what: str = "config file", where_to_look: str = "configs/",
                 expected: str = "a mapping of settings at the top level", error=ConfigError) -> dict:
    """A YAML file that must hold a mapping (a config, an ablation grid), with errors naming the file."""
    if not path.is_file():
        raise error(f"{what} {path} does not exist (see {where_to_look} for examples)")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({err})") from None
    if not isinstance(content, dict):
        raise error(f"{path}: expected {expected}")
    return content


def load(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    cfg = defaults()
    if path is not None:
        path = Path(path)
        user = read_mapping(path)
        cfg = merge(cfg, user, str(path))
        if cfg.get("name") is None:
            cfg["name"] = path.stem
    cfg = merge(cfg, overrides or {}, "command line")
    given = set(flatten(overrides or {}))
    if path is not None:
        given |= set(flatten(user))
    if cfg["loss"]["name"] != defaults()["loss"]["name"] and not any(k.split(".")[:2] == ["loss", "params"] for k in given):
        cfg["loss"]["params"] = {}  # another loss: its own defaults, not focal's arguments
    d = cfg["data"]
    if d["demo"] and d["demo_task"] != "multilabel" and d["task"] == "auto":
        d["task"] = d["demo_task"]  # the single-label demo's own task (auto would read an ordinal demo as multiclass)
    if cfg["data"]["task"] not in ("auto", "multilabel"):  # auto is resolved once the CSV is read (data.single_label)
        from . import tasks

        tasks.apply_task_defaults(cfg, cfg["data"]["task"], given)
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """Impossible values and combinations fail here, before any TensorFlow work (schema.py has the rules)."""
    schema.validate(cfg)


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def diff(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Settings that differ between two resolved configs (for the 'same run, other config' check).

    A setting missing from `saved` (a run made before the setting existed) counts as its default,
    so adding a setting to cxrlt does not make every older run directory "another config"."""
    a, b = {**flatten(defaults()), **flatten(saved)}, flatten(current)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k) and not k.startswith(ignore)]


# Named flags: flag -> dotted key. Everything else is reachable with --set key=value.
FLAGS = {
    "--size": "input.size",
    "--backbone": "model.backbone",
    "--weights": "model.weights",
    "--init": "model.init",
    "--fold": "train.fold",
    "--folds": "train.folds",
    "--epochs": "train.epochs",
    "--steps-per-execution": "train.steps_per_execution",
    "--batch-size": "train.batch_size",
    "--lr": "optim.lr",
    "--labels": "data.labels",
    "--image-root": "data.image_root",
    "--prepared": "data.prepared",
    "--test-labels": "data.test_labels",
    "--test-image-root": "data.test_image_root",
    "--classes": "data.classes",
    "--uncertain": "data.uncertain",
    "--out": "out",
    "--name": "name",
    "--seed": "seed",
    "--strategy": "distribute.strategy",
    "--check-images": "data.check_images",
    "--edition": "data.edition",
    "--exclude": "data.exclude",
    "--task": "data.task",
    "--label-column": "data.label_column",
    "--demo-task": "data.demo_task",
}


# What a flag means where the same word means something else in another command.
FLAG_HELP = {
    "--size": "the model's input side in px (images are resized to it)",
    "--weights": "backbone weights: imagenet | none | a folder from `python -m cxrlt weights` "
                 "(not ensemble --weights, which weighs runs)",
    "--fold": "train one fold (an index) or all (explain --fold takes a list of folds to average)",
    "--out": "folder the run directory is made in (runs/<name>)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); flags override it")
    base = flatten(defaults())
    for flag, key in FLAGS.items():
        what = f"{FLAG_HELP[flag]}; " if flag in FLAG_HELP else ""
        parser.add_argument(flag, dest=key, default=None, metavar=key.rsplit(".", 1)[-1].upper(),
                            help=f"{what}sets {key} (default: {base.get(key)})".replace("%", "%%"))
    parser.add_argument("--demo", action="store_true", help="use the embedded synthetic CXR-LT-format data")
    parser.add_argument("--demo-edition", choices=sorted(schema.DEMO_EDITIONS),
                        help="the demo in that edition's layout (implies --demo; 2026: 16-bit PNGs, a removal list)")
    parser.add_argument("--mixed-precision", action="store_true", help="16-bit compute: bfloat16 on CPUs and GPUs of compute capability >= 8.0, float16 with loss scaling on older GPUs (distribute.mixed_precision_dtype)")
    parser.add_argument("--jit-compile", action="store_true", help="XLA-compile the train step (GPU; 3-5x slower on CPU)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="train without the images the pre-flight check finds bad (listed in the run directory)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept label paths that leave the image root ('..' or a symlink)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting, e.g. --set loss.params.gamma=1.5 (repeatable)")


def from_args(args: argparse.Namespace) -> dict:
    overrides: dict[str, Any] = {}
    for key in FLAGS.values():
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    if getattr(args, "demo", False) or getattr(args, "data.demo_task", None) not in (None, "multilabel"):
        overrides["data.demo"] = True  # --demo-task multiclass|ordinal implies --demo
    if getattr(args, "demo_edition", None):
        overrides["data.demo"] = True
        overrides["data.demo_edition"] = schema.DEMO_EDITIONS[args.demo_edition]
    if getattr(args, "mixed_precision", False):
        overrides["distribute.mixed_precision"] = True
    if getattr(args, "jit_compile", False):
        overrides["distribute.jit_compile"] = True
    if getattr(args, "skip_bad", False):
        overrides["data.skip_bad"] = True
    if getattr(args, "allow_outside_root", False):
        overrides["data.allow_outside_root"] = True
    nested: dict = {}
    for key, value in overrides.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    cfg = load(args.config, nested)
    if cfg["train"]["fold"] != "all" and isinstance(cfg["train"]["fold"], str):
        raise ConfigError(f"--fold must be an index or 'all', got {cfg['train']['fold']!r}")
    return with_run_name(cfg)


def with_run_name(cfg: dict) -> dict:
    """`cfg` with its run name: the given one, the config file's stem (set by `load`), else demo / run."""
    if cfg.get("name") is None:
        cfg = {**cfg, "name": "demo" if cfg["data"]["demo"] else "run"}
    return cfg
