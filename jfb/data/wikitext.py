"""WikiText (Merity et al. 2016), the corpus of the DEQ-Transformer's language-model results, read from the
archive a user downloaded (nothing is fetched here): the zip's MD5 is checked against the published one
(torchtext's), then the split's member is read, at most ``max_bytes`` of it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import JfbError
from .checksum import verify_md5

#: archive name -> (MD5 of the zip, its folder inside)
ARCHIVES = {
    "wikitext-103-v1.zip": ("9ddaacaf6af0710eda8c456decff7832", "wikitext-103"),
    "wikitext-2-v1.zip": ("542ccefacc6c27f945fb54453812b3cd", "wikitext-2"),
}
SPLITS = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}


def is_wikitext_archive(path: Path) -> bool:
    return Path(path).name in ARCHIVES


def read_wikitext(path: Path, split: str, max_bytes: int, md5: str | None = None) -> bytes:
    """The first ``max_bytes`` of ``split`` (train, valid, test) of a WikiText zip, after its checksum
    (``md5``: the published one of the archive's name unless given)."""
    path = Path(path)
    if path.name not in ARCHIVES:
        raise JfbError(f"{path}: not a WikiText archive this loader knows ({', '.join(ARCHIVES)})")
    if split not in SPLITS:
        raise JfbError(f"unknown WikiText split {split!r}; choose one of {', '.join(SPLITS)}")
    expected, folder = ARCHIVES[path.name]
    verify_md5(path, md5 or expected)
    member = f"{folder}/{SPLITS[split]}"
    with zipfile.ZipFile(path) as archive:
        if member not in archive.namelist():
            raise JfbError(f"{path}: no member {member}")
        with archive.open(member) as stream:
            return stream.read(max_bytes)
