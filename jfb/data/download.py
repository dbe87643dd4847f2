"""Download-once with checksum verification, and a clear error when offline."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from .checksum import verify_md5

DATA_DIR_ENV = "JFB_DATA_DIR"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, Path.home() / ".cache" / "torch-jfb"))


def fetch(url: str, md5: str, directory: Path, filename: str | None = None) -> Path:
    """Return ``directory/filename``, downloading it from ``url`` first if absent; always MD5-checked."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (filename or url.rsplit("/", 1)[-1])
    if not path.exists():
        _download(url, path)
    verify_md5(path, md5)
    return path


def _download(url: str, path: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except OSError as exc:
            os.unlink(tmp.name)
            raise FileNotFoundError(
                f"{path.name} is not in {path.parent} and downloading it from {url} failed ({exc}); "
                f"download it yourself and put it there, or point --data-dir / ${DATA_DIR_ENV} at a folder holding it"
            ) from exc
    os.replace(tmp.name, path)
