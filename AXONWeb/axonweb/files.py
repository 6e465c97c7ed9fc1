"""Where the web app reads and writes files: its work folder, size-limited uploads, and files chosen on
the server under one data folder.

A browser may be anyone who can reach the port, so nothing it sends picks a path: uploads keep only a
cleaned base name and go to a new folder under ``WORK/uploads``; a server file is resolved (links
included) and refused unless it lies under the data folder; exports go to ``WORK/exports``. Refusals
are `AxonInputError`s, one line naming the file and the problem, as on the command line.

Standard library only (no trame, no Slicer): the rules are tested on their own.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from axonct.errors import AxonInputError

DEFAULT_MAX_UPLOAD_MB = 512
"""A chest CT as NIfTI is 30-150 MB, a DICOM CT series up to ~300 MB, a radiograph under 60 MB."""

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nrrd", ".nhdr", ".mha", ".mhd",
                  ".nii", ".nii.gz")
"""What the server-file list offers (the engine's readers decide what is usable, with their own messages)."""
LISTING_DEPTH = 3
LISTING_MAX_ENTRIES = 400
LISTING_MAX_VISITED = 5000  # a data folder with a huge tree is listed partly, never hangs the page
SLOTS = ("frontal", "lateral", "truth")


def safe_name(name: str) -> str:
    """A client's file name reduced to a harmless base name: no folders (either separator), no leading
    dots, only letters, digits and ``._-+``; '' when nothing usable is left."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    cleaned = re.sub(r"[^\w.+-]+", "_", base).lstrip(".")
    return "" if cleaned in ("", "_") else cleaned[:200]


def _content_bytes(content) -> bytes:
    """A trame client file's content: bytes, or a list of chunks (large files arrive in parts)."""
    if content is None:
        return b""
    if isinstance(content, (list, tuple)):
        return b"".join(bytes(c) for c in content)
    return bytes(content)


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


class WorkFolder:
    """The app's folder: ``uploads/`` (one new sub-folder per upload), ``exports/``, ``jobs/`` (the
    workers' temporary folders, removed when a job ends) and ``sample-case/`` (the prepared sample)."""

    def __init__(self, root: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
        if not max_upload_mb > 0:
            raise AxonInputError(None, f"--max-upload-mb must be above 0 (got {max_upload_mb})")
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise AxonInputError(root, "is a file; --work-dir needs a folder (it is created when missing)")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.max_upload_bytes = int(max_upload_mb * 1e6)
        for sub in (self.uploads, self.exports, self.jobs, self.sample_case):
            sub.mkdir(exist_ok=True)

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def sample_case(self) -> Path:
        return self.root / "sample-case"

    def limit_text(self) -> str:
        return f"uploads are limited to {megabytes(self.max_upload_bytes)} (axon app --max-upload-mb)"

    def check_upload_size(self, files: list[dict]) -> None:
        """Refuse, before anything is written, files whose declared or actual size exceeds the limit."""
        total = 0
        for f in files:
            size = max(int(f.get("size") or 0), len(_content_bytes(f.get("content"))) if "content" in f else 0)
            total += size
            if size > self.max_upload_bytes:
                raise AxonInputError(safe_name(f.get("name")) or "upload", f"is {megabytes(size)}; {self.limit_text()}")
        if total > self.max_upload_bytes:
            raise AxonInputError(None, f"the {len(files)} files together are {megabytes(total)}; {self.limit_text()}")

    def save_upload(self, slot: str, files: list[dict]) -> tuple[Path, str]:
        """Write a client's files (trame file dicts: name, size, content) to a new folder under
        ``uploads/``; returns (what to read: the file, or the folder of a multi-file DICOM series, and
        the name to show)."""
        if slot not in SLOTS:
            raise ValueError(f"slot must be one of {SLOTS}, not {slot!r}")
        files = [f for f in (files or []) if isinstance(f, dict)]
        if not files:
            raise AxonInputError(None, "no file arrived; choose a file to upload")
        self.check_upload_size(files)
        names = []
        for f in files:
            name = safe_name(f.get("name"))
            if not name:
                raise AxonInputError(str(f.get("name")), "is not a usable file name")
            if name in names:
                raise AxonInputError(name, "was uploaded twice in one go")
            names.append(name)
        folder = self._new_upload_folder(slot)
        for f, name in zip(files, names):
            target = folder / name
            if target.resolve().parent != folder:  # cannot happen with safe_name; kept as the rule itself
                raise AxonInputError(name, "would be written outside the upload folder")
            with open(target, "xb") as out:
                out.write(_content_bytes(f.get("content")))
        if len(files) == 1:
            return folder / names[0], names[0]
        return folder, f"{len(files)} files ({names[0]}, ...)"

    def _new_upload_folder(self, slot: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            folder = self.uploads / f"{stamp}-{n:03d}-{slot}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a new folder under {self.uploads}")

    def new_export_folder(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            folder = self.exports / (stamp if n == 0 else f"{stamp}-{n}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a new folder under {self.exports}")


class ServerFiles:
    """Files on the server the page may choose: only under ``root`` (`axon app --data-dir`)."""

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise AxonInputError(root, "is not a folder; --data-dir needs the folder whose files the page may open")
        self.root = root.resolve()

    def resolve(self, text: str) -> tuple[Path, str]:
        """(the absolute path, the name to show) of a path typed or picked in the page, relative to the
        data folder; links are followed before the check, so none leads out of it."""
        text = str(text or "").strip()
        if not text:
            raise AxonInputError(None, "choose a file from the data folder first")
        candidate = Path(text).expanduser()
        candidate = candidate if candidate.is_absolute() else self.root / candidate
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root):
            raise AxonInputError(text, f"is outside the folder this app serves files from ({self.root}); "
                                       "start `axon app --data-dir FOLDER` to open files elsewhere")
        if not resolved.exists():
            raise AxonInputError(text, "does not exist")
        return resolved, resolved.relative_to(self.root).as_posix() or "."

    def listing(self) -> list[str]:
        """Image files and DICOM folders under the data folder (relative paths, sorted; hidden entries
        skipped; at most `LISTING_DEPTH` levels and `LISTING_MAX_ENTRIES` entries)."""
        found, visited = [], 0
        for here, dirs, files in os.walk(self.root):
            depth = len(Path(here).relative_to(self.root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < LISTING_DEPTH)
            visited += len(files) + len(dirs)
            rel = Path(here).relative_to(self.root)
            dicom_here = False
            for name in sorted(files):
                if name.startswith("."):
                    continue
                lower = name.lower()
                if lower.endswith(IMAGE_SUFFIXES):
                    found.append((rel / name).as_posix())
                    dicom_here |= lower.endswith((".dcm", ".dicom"))
            if dicom_here and depth > 0:
                found.append(rel.as_posix() + "/")  # the folder: a DICOM CT series
            if len(found) >= LISTING_MAX_ENTRIES or visited >= LISTING_MAX_VISITED:
                break
        return sorted(found)[:LISTING_MAX_ENTRIES]
