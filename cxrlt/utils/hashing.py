"""The sha256 of a file, read in 1 MiB blocks: how a resumed job recognises the exact input it was
made from (prepare's label CSV, a fused run's source fold model)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
