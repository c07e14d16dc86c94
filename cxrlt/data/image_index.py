"""Find bare image file names in the sub-folders of an image root (PadChest's `0/ ... 54/`).

CXR-LT 2026's `ImageID` is a bare file name, while PadChest ships its PNGs in numbered
sub-folders. When some names of a list are not directly under `--image-root`, the root is walked
once (symbolic links to folders followed, each real folder once) and every file name is indexed;
no per-image globbing. The index is cached in the run directory, so a resumed run, the ensemble
and `predict` do not walk again; a cache that no longer finds a name, or names a file that is
gone, is rebuilt. A name found in two places is refused with both paths, never guessed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pandas as pd

from ..utils import atomic
from ..utils.errors import UserError

log = logging.getLogger(__name__)


class ImageIndexError(UserError):
    """A file name that the image root holds twice (the message names both paths)."""


def cache_path(cache_dir: str | os.PathLike, root: Path) -> Path:
    """One cache file per image root (a run may read its training and test lists from two roots)."""
    key = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"image_index-{key}.txt"


def walk(root: Path) -> dict[str, list[str]]:
    """{file name: [paths relative to root]} of every file under `root`, in one walk.

    Folder links are followed (a tree of links into another disk is a usual layout; whether a
    path may leave the root is `dataset._resolve_paths`' rule); a folder reached twice through
    links is walked once."""
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    root = str(root)
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for name in sorted(files):
            found.setdefault(name, []).append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return found


def _read_cache(path: Path, root: Path) -> dict[str, list[str]] | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or lines[0] != f"# root: {os.path.abspath(root)}":
        return None
    found: dict[str, list[str]] = {}
    for rel in lines[1:]:
        found.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
    return found


def _write_cache(path: Path, root: Path, found: dict[str, list[str]]) -> None:
    rels = sorted(rel for paths in found.values() for rel in paths)
    atomic.write_text(path, "\n".join([f"# root: {os.path.abspath(root)}", *rels]) + "\n")


def place(rel_paths: pd.Series, root: Path, *, where: str, column: str, cache_dir=None) -> pd.Series:
    """`rel_paths` with each bare file name that is not directly under `root` replaced by its path in
    a sub-folder. Lists of paths (any '/'), roots that are not folders and lists whose names all
    lie directly under the root come back unchanged; names found nowhere are left for the image
    check to report."""
    if rel_paths.str.contains(r"[/\\]", regex=True).any() or not os.path.isdir(root):
        return rel_paths
    try:
        top = set(os.listdir(root))
    except OSError:
        return rel_paths
    missing = ~rel_paths.isin(top)
    if not missing.any():
        return rel_paths
    wanted = set(rel_paths[missing])
    cache = cache_path(cache_dir, root) if cache_dir is not None else None
    found = _read_cache(cache, root) if cache is not None and cache.is_file() else None
    if found is not None and not _still_valid(found, wanted, root):
        log.info("%s: the cached index of %s is out of date (a name is missing or moved); walking the folder again",
                 where, root)
        found = None
    if found is None:
        started = time.perf_counter()
        found = walk(root)
        log.info("%s: %d names of '%s' are not directly under %s; indexed its %d files in one walk (%.1f s)%s", where,
                 len(wanted), column, root, sum(len(v) for v in found.values()), time.perf_counter() - started,
                 f", cached in {cache}" if cache is not None else "")
        if cache is not None:
            _write_cache(cache, root, found)
    twice = sorted(name for name in wanted if len(found.get(name, ())) > 1)
    if twice:
        shown = "; ".join(f"{name!r} at {found[name][0]} and {found[name][1]}" for name in twice[:3])
        raise ImageIndexError(
            f"{where}: {len(twice)} file names of '{column}' are found twice under {root}: {shown}"
            f"{' ...' if len(twice) > 3 else ''}; remove the extra copies (or point --image-root at one of the folders)")
    mapping = {name: found[name][0] for name in wanted if name in found}
    return rel_paths.where(~missing, rel_paths.map(lambda name: mapping.get(name, name)))


def _still_valid(found: dict[str, list[str]], wanted: set[str], root: Path) -> bool:
    """Every wanted name is indexed and its indexed file(s) still exist (one stat per wanted name)."""
    for name in wanted:
        paths = found.get(name)
        if not paths or not all(os.path.exists(os.path.join(root, rel)) for rel in paths):
            return False
    return True
