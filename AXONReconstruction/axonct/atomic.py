"""Write files and folders so that a crash or a cancel never leaves a half-written result.

Everything is written under a temporary name in the destination folder and renamed into place
(rename is atomic on one file system). The one place this is done: the engine, the output policy
(which stages a run's files with `partial_name`) and the Slicer panel all build on it. Standard
library only, so the GUI process can use it without loading torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

PARTIAL_TAG = ".partial-"


def partial_name(path: Path) -> Path:
    """A sibling temporary name that keeps the extension (writers choose the format from it)."""
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}{PARTIAL_TAG}{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        _usual_mode(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _usual_mode(path: Path) -> None:
    """Give a finished file the mode a plain ``open`` would (0666 less the umask): some writers
    (safetensors, mkstemp-based ones) create private 0600 files, which other users of a shared
    weights folder then cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `path` (replacing an old one).

    Only for folders AXON owns entirely (the case folders inside a training cache): user-facing
    outputs go through `output_policy.Outputs`, which never replaces or empties a folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{PARTIAL_TAG}{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp)  # normal permissions (0777 & ~umask); tempfile.mkdtemp would make it 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def remove_partials(folder: str | Path) -> int:
    """Delete leftovers of interrupted writes (e.g. after a kill -9); returns how many."""
    n = 0
    for p in Path(folder).glob(f".*{PARTIAL_TAG}*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in blocks (weights and sample data are checked against it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
