"""The `code/` folder of a submission zip: the code and settings that produced the predictions.

CXR-LT 2026's rules ask every submission zip for "a code/ directory with all code used for model
development and inference" (CheXFusion's 2023 zip held one too). cxrlt writes, for every edition:

    code/README.txt                  what is here and the commands to rerun it
    code/cxrlt_version.txt           the installed cxrlt version
    code/pip_freeze.txt              every installed distribution, `name==version` (importlib.metadata)
    code/cxrlt/...                   cxrlt's own source (.py, .yaml, .md): the code that ran
    code/runs/<run>/config.yaml      each run's resolved config, command.txt (every command that
                                     trained it), classes.json, fusion.json for a fused run
    code/ensemble_command.txt        the ensemble command itself
    code/user/...                    --code DIR: the user's own folder (.git, caches and links left out)

Every entry is bytes in memory, written by `submission.write_submission` with a fixed timestamp,
so the same runs give the same zip byte for byte.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shlex
from pathlib import Path

from ..utils.errors import UserError

log = logging.getLogger(__name__)

SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".cfg", ".toml", ".txt")
RUN_FILES = ("config.yaml", "command.txt", "classes.json", "fusion.json")
SKIPPED_DIRS = {".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints"}
USER_LIMIT_BYTES = 50 * 2 ** 20  # a code folder, not a data set: more than this is refused


class CodeFolderError(UserError):
    """A --code folder that cannot go into the submission as it is."""


def pip_freeze() -> str:
    """`name==version` of every installed distribution, sorted: what `pip freeze` lists, without
    starting pip (importlib.metadata reads the same installed metadata)."""
    seen = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(seen[k] for k in sorted(seen)) + "\n"


def cxrlt_source() -> dict[str, bytes]:
    """{'code/cxrlt/<path>': bytes} of the cxrlt package that is running."""
    import cxrlt

    package = Path(cxrlt.__file__).resolve().parent
    out = {}
    for folder, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(SOURCE_SUFFIXES):
                path = Path(folder) / name
                out["code/cxrlt/" + path.relative_to(package).as_posix()] = path.read_bytes()
    return out


def user_folder(folder: Path) -> dict[str, bytes]:
    """{'code/user/<path>': bytes} of the user's folder; .git, caches, virtual environments and
    links are left out (a link could pull in a whole disk)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CodeFolderError(f"--code {folder} is not a folder; pass the folder that holds your own code")
    out, total = {}, 0
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not os.path.islink(os.path.join(here, d)))
        for name in sorted(files):
            path = Path(here) / name
            if path.is_symlink() or name.endswith(".pyc"):
                continue
            total += path.stat().st_size
            if total > USER_LIMIT_BYTES:
                raise CodeFolderError(f"--code {folder} holds more than {USER_LIMIT_BYTES // 2 ** 20} MB (at {path}); "
                                      "pass the folder of your code only, without data or model files")
            out["code/user/" + path.relative_to(folder).as_posix()] = path.read_bytes()
    return out


def collect(run_list, *, command: list[str] | None = None, user_code: Path | None = None) -> dict[str, bytes]:
    """Every entry of the code/ folder for a submission made from `run_list` (runs.Run objects)."""
    from .. import __version__

    out = dict(cxrlt_source())
    out["code/cxrlt_version.txt"] = f"cxrlt {__version__}\n".encode()
    out["code/pip_freeze.txt"] = pip_freeze().encode()
    names = []
    for run in run_list:
        name = run.root.name
        while f"code/runs/{name}/config.yaml" in out:  # two runs of one name from different folders
            name += "_"
        names.append(name)
        for file in RUN_FILES:
            path = run.root / file
            if path.is_file():
                out[f"code/runs/{name}/{file}"] = path.read_bytes()
        if run.is_fused:  # its fold models sit on its source run's frozen backbones: that run's settings too
            import json

            source = Path(json.loads(run.fusion_json.read_text())["source"])
            for file in RUN_FILES:
                if (source / file).is_file():
                    out[f"code/runs/{name}/source/{file}"] = (source / file).read_bytes()
    if command is not None:
        out["code/ensemble_command.txt"] = ("python -m cxrlt.ensemble " + shlex.join(command) + "\n").encode()
    if user_code is not None:
        out.update(user_folder(user_code))
    out["code/README.txt"] = _readme(names, user_code is not None).encode()
    log.info("code/ folder: %d files (cxrlt %s source, pip freeze, %d run config(s)%s)", len(out), __version__,
             len(run_list), ", your --code folder under code/user/" if user_code is not None else "")
    return out


def _readme(run_names: list[str], has_user: bool) -> str:
    runs = "\n".join(f"  runs/{n}/config.yaml, runs/{n}/command.txt" for n in run_names)
    return (
        "The code that produced the predictions in this zip (written by cxrlt's ensemble command).\n\n"
        "cxrlt/               the cxrlt source that ran (install: pip install -r pip_freeze.txt, then put this folder\n"
        "                     on PYTHONPATH); cxrlt_version.txt names the version\n"
        "pip_freeze.txt       every installed package and its version\n"
        f"runs/                each run's resolved config and the command(s) that trained it:\n{runs}\n"
        "ensemble_command.txt the command that combined the runs into this submission\n"
        + ("user/                the submitter's own code (--code)\n" if has_user else "")
        + "\nTo rerun a run, run the commands in runs/<run>/command.txt (from the folder and with the data paths\n"
        "they name: the submitter's); config.yaml is every setting they resolved to.\n"
    )
