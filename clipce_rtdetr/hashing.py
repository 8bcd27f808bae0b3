"""sha256 of a file's contents, read in blocks (hashlib.file_digest is Python 3.11+; we support 3.10)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, block: int = 1 << 22) -> hashlib._Hash:
    """The sha256 hash object of a file's contents (call .hexdigest() or .digest())."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h
