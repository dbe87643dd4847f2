"""File checksums with errors that say which file and what was expected."""

from __future__ import annotations

import hashlib
from pathlib import Path


class ChecksumError(ValueError):
    pass


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: MD5 checksum mismatch (expected {expected}, got {actual}); "
            "the file is corrupted or incomplete: delete it and download it again"
        )
