"""What AXON writes, and what it never touches: the one output policy of every command.

- An existing folder is never deleted, emptied or re-created: new files are written beside what is
  there, and the folder keeps its owner's permissions.
- A file AXON did not write is never replaced. A file an earlier AXON run wrote (recorded, with its
  size and modification time, in the folder's small manifest ``.axon-outputs.json``) is replaced only
  with ``--overwrite``; a file changed since AXON wrote it counts as the user's.
- Every planned output is checked (conflicts, writability, free space) before any compute.
- Files are written under hidden temporary names beside their targets and renamed into place only
  when every file of the run is complete. A replaced file is kept (as a hard link or a copy) until the
  whole set is in place, so a failure at any point leaves every older file as it was.
- On an error, SIGINT or SIGTERM, the temporary files and any folder this run created are removed.

Use: ``outputs = Outputs("drr", overwrite)``, then ``outputs.folder(...)`` / ``outputs.file(...)`` for
every target and ``outputs.check(expected_bytes)`` before computing; after computing,
``with outputs: writer(outputs.path(target))`` commits on success and discards on failure.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Iterator

from axonct.atomic import PARTIAL_TAG, partial_name, write_text
from axonct.errors import AxonInputError

MANIFEST = ".axon-outputs.json"
OLD_TAG = ".old-"
MIN_FREE_BYTES = 16 << 20
"""Free space always kept on top of a run's own estimate (file system metadata, temporary copies)."""

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


# ----------------------------------------------------------------------------- signals


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every ``finally`` and cleanup runs; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_critical_depth = 0
_pending: list[int] = []


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Defer SIGINT/SIGTERM while a set of renames runs, so it cannot stop half-way."""
    global _critical_depth
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
    if _critical_depth == 0 and _pending:
        signum = _pending.pop()
        _pending.clear()
        _raise_for(signum)


def _raise_for(signum: int):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt()
    raise Terminated(signum)


def _raising_handler(signum, frame):
    if _critical_depth:
        _pending.append(signum)
        return
    _raise_for(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT -> KeyboardInterrupt, SIGTERM -> Terminated, so a command cleans up like on an error
    (used by ``cli.main`` around every command; exit codes 130 and 143)."""
    old = {}
    try:
        for sig in EXIT_SIGNAL:
            old[sig] = signal.signal(sig, _raising_handler)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class CooperativeSignals:
    """Turns SIGINT/SIGTERM into a flag a long computation checks between steps (``axon reconstruct``
    stops at the next sampling step and writes nothing)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in EXIT_SIGNAL:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- manifest


def _read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError):
        return {}  # no (readable) manifest: nothing here counts as AXON's


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def written_by_axon(path: Path) -> dict | None:
    """The manifest entry of a file AXON wrote and nobody changed since, else None."""
    entry = _read_manifest(path.parent).get(path.name)
    if not isinstance(entry, dict) or not path.is_file() or path.is_symlink():
        return None
    try:
        stamp = _stamp(path)
    except OSError:
        return None
    return entry if all(entry.get(k) == v for k, v in stamp.items()) else None


def _write_manifest(folder: Path, command: str, names: list[str], removed: list[str]) -> None:
    files = _read_manifest(folder)
    for name in removed:
        files.pop(name, None)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for name in names:
        try:
            files[name] = {**_stamp(folder / name), "command": f"axon {command}", "written": now}
        except OSError:
            files.pop(name, None)
    text = json.dumps({"about": "files written by AXON here; `--overwrite` may replace only these",
                       "format": 1, "files": dict(sorted(files.items()))}, indent=1)
    write_text(folder / MANIFEST, text)


# ----------------------------------------------------------------------------- locations


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def disk_free(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def probe_write(folder: Path) -> None:
    """Create and remove a hidden file: the only check that also holds for ACLs and read-only mounts."""
    probe = folder / f".axon-probe-{uuid.uuid4().hex[:8]}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    os.unlink(probe)


def check_location(path: str | Path, expected_bytes: int = 0) -> None:
    """Refuse (AxonInputError) an output location that cannot be created or written, or whose file
    system lacks ``expected_bytes`` (+ a margin) of free space."""
    path = Path(path)
    anc = _existing_ancestor(path)
    if anc == Path(os.path.abspath(path)) and not anc.is_dir():
        anc = anc.parent  # an existing file: whether it may be replaced is the command's call (`Outputs.file`)
    if not anc.is_dir():
        raise AxonInputError(anc, f"is a file, so {path} cannot be created inside it; choose another output")
    try:
        probe_write(anc)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise AxonInputError(anc, f"is not writable ({reason}); choose another output location") from None
    need = int(expected_bytes) + MIN_FREE_BYTES
    free = disk_free(anc)
    if free < need:
        raise AxonInputError(anc, f"has {_mb(free)} free; this run needs about {_mb(need)}: free some space "
                                  "or choose another output location")


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} kB"


# ----------------------------------------------------------------------------- one run's outputs


class Outputs:
    """The files one run writes: planned and checked up front, staged, committed all together."""

    def __init__(self, command: str, overwrite: bool = False):
        self.command = command
        self.overwrite = overwrite
        self.targets: list[Path] = []
        self.folders: list[Path] = []
        self.retired: list[Path] = []  # earlier AXON outputs this run supersedes (--overwrite only)
        self._staged: dict[Path, Path] = {}
        self._made_dirs: list[Path] = []
        self._new: dict[Path, bool] = {}  # target -> absent when planned (then it must still be absent at commit)

    # -- planning (before any compute)
    def folder(self, path: str | Path) -> Path:
        """An output folder: absent (created when writing) or an existing folder (written into)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise AxonInputError(path, "is a file, not a folder; AXON writes a folder of outputs here and never "
                                       "replaces a file with it: choose another output folder")
        _no_file_ancestor(path)
        self.folders.append(path)
        return path

    def file(self, path: str | Path) -> Path:
        """An output file; refused now if it would replace something that is not ours to replace."""
        path = Path(path)
        _no_file_ancestor(path.parent)
        if path.is_dir() and not path.is_symlink():
            raise AxonInputError(path, "is a folder; AXON would write a file with this name: move the folder "
                                       "or choose another output name")
        if path.exists() or path.is_symlink():
            if written_by_axon(path) is None:
                raise AxonInputError(path, "already exists and was not written by AXON (or was changed since); "
                                           "AXON never replaces it: move it or choose another output name")
            if not self.overwrite:
                raise AxonInputError(path, f"holds the output of an earlier AXON run; pass --overwrite to replace "
                                           f"it (the old file stays until the new one is complete) or choose "
                                           f"another output name")
        if path not in self.targets:
            self.targets.append(path)
            self._new[path] = not (path.exists() or path.is_symlink())
        return path

    def retire(self, folder: str | Path, pattern: str) -> None:
        """With --overwrite: earlier AXON outputs in ``folder`` matching ``pattern`` that this run does
        not rewrite (e.g. surplus slices of an older DICOM series) are removed when the run commits."""
        folder = Path(folder)
        if not self.overwrite or not folder.is_dir():
            return
        for name in _read_manifest(folder):
            p = folder / name
            if fnmatch.fnmatch(name, pattern) and p not in self.targets and written_by_axon(p) is not None:
                self.retired.append(p)

    def check(self, expected_bytes: int = 0) -> None:
        """Writability and free space of every planned location, before any compute."""
        seen = set()
        for p in self.folders + [t.parent for t in self.targets]:
            anc = _existing_ancestor(p)
            if anc in seen:
                continue
            seen.add(anc)
            check_location(p, expected_bytes)

    # -- writing (after compute)
    def path(self, target: str | Path) -> Path:
        """The hidden temporary name to write ``target`` to (it keeps the extension)."""
        target = Path(target)
        if target not in self.targets:
            self.file(target)
        if target not in self._staged:
            if self not in _active:
                _active.append(self)
            self._mkdirs(target.parent)
            self._staged[target] = partial_name(target)
        return self._staged[target]

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            os.mkdir(d)  # normal permissions (0777 & ~umask), unlike mkdtemp's 0700
            self._made_dirs.append(d)

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException as failure:
                self.discard()
                self._explain(failure)
                raise
            return False
        self.discard()
        self._explain(exc)
        return False

    def _explain(self, exc) -> None:
        """A disk, permission or name problem while writing: one line, not a traceback."""
        if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
            where = exc.filename or (self.targets[0] if self.targets else "")
            raise AxonInputError(where, f"could not be written ({os.strerror(exc.errno)}); every earlier file "
                                        "was kept as it was") from None

    def commit(self) -> None:
        missing = [t for t in self.targets if t not in self._staged or not self._staged[t].exists()]
        if missing:
            raise RuntimeError(f"internal: {missing[0]} was planned but not written")
        done: list[tuple[Path, Path | None]] = []
        with critical():
            try:
                for target, tmp in self._staged.items():
                    if self._new.get(target, False):
                        _claim(target, tmp)  # still absent, or someone else wrote it meanwhile: refused
                        done.append((target, None))
                        continue
                    if written_by_axon(target) is None and (target.exists() or target.is_symlink()):
                        raise AxonInputError(target, "was changed by someone else while this run was computing; "
                                                     "AXON never replaces it: nothing of this run was kept")
                    backup = _keep_old(target)
                    done.append((target, backup))
                    os.replace(tmp, target)
                for old in self.retired:
                    done.append((old, _keep_old(old, move=True)))
                if _pending:  # a signal during the renames: the cancel wins, the older set comes back
                    raise _SignalDuringCommit()
            except BaseException as failure:
                for target, backup in reversed(done):
                    with contextlib.suppress(OSError):
                        if backup is not None:
                            os.replace(backup, target)  # the older file, back under its name
                        elif target in self._staged and target.is_file():
                            target.unlink()  # a new name this run had just filled
                if isinstance(failure, _SignalDuringCommit):
                    signum = _pending.pop()
                    _pending.clear()
                    _raise_for(signum)
                raise
            for _, backup in done:
                if backup is not None:
                    backup.unlink(missing_ok=True)
            by_folder: dict[Path, list[str]] = {}
            for target in self._staged:
                by_folder.setdefault(target.parent, []).append(target.name)
            gone: dict[Path, list[str]] = {}
            for old in self.retired:
                gone.setdefault(old.parent, []).append(old.name)
            for folder in set(by_folder) | set(gone):
                try:
                    _write_manifest(folder, self.command, by_folder.get(folder, []), gone.get(folder, []))
                except OSError:
                    pass  # the outputs are in place; without a record they only count as the user's
        self._staged.clear()
        self._made_dirs.clear()
        if self in _active:
            _active.remove(self)

    def discard(self) -> None:
        for tmp in self._staged.values():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self._staged.clear()
        for d in reversed(self._made_dirs):
            with contextlib.suppress(OSError):
                for leftover in d.glob(f".*{PARTIAL_TAG}*"):  # e.g. a writer's own temporary file
                    leftover.unlink()
                d.rmdir()  # only if empty: never anything else
        self._made_dirs.clear()
        if self in _active:
            _active.remove(self)


_active: list[Outputs] = []  # runs with staged files, not yet committed or discarded


class RunFolder:
    """The folder of a long, resumable run (`axon prepare`, `synth`, `train`), under the same policy.

    Such a run writes as it goes (cases, checkpoints, logs), each file whole (`atomic`), so a cut-off
    run keeps what it finished and continues from there; there is no single commit. Per file:

    - before any compute, a file the run would write that exists and AXON did not write (or that was
      changed since) is refused, unless ``owned`` recognises the folder as an earlier run of this
      kind (a cache manifest, a training checkpoint: those runs are continued);
    - every file is recorded in the folder's manifest as soon as it is in place (`record`);
    - a folder this run created is removed when the run fails or is stopped before it kept anything
      (`keep`: its first case or checkpoint), so a refused or cancelled run leaves no folder behind.
    """

    def __init__(self, command: str, folder: str | Path, names: list[str], owned=None):
        self.command, self.folder, self.names = command, Path(folder), list(names)
        self._owned = owned or (lambda folder: False)
        self.created = False
        self.kept = False

    def check(self) -> None:
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise AxonInputError(folder, f"is a file; --out needs a folder for `axon {self.command}`")
        _no_file_ancestor(folder)
        if folder.is_dir() and not self._owned(folder):
            for name in self.names:
                path = folder / name
                if (path.exists() or path.is_symlink()) and written_by_axon(path) is None:
                    raise AxonInputError(path, f"already exists and was not written by AXON (or was changed since); "
                                               f"`axon {self.command}` would write it and never replaces it: choose "
                                               "another --out folder")
        check_location(folder)

    def __enter__(self) -> "RunFolder":
        self.check()
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def record(self, *paths: Path) -> None:
        """Note files of this run (directly in the folder) as AXON's, with their current size and time."""
        _write_manifest(self.folder, self.command, [Path(p).name for p in paths if Path(p).exists()], [])

    def keep(self) -> None:
        self.kept = True

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.created and not self.kept:
            shutil.rmtree(self.folder, ignore_errors=True)
        return False


def discard_uncommitted() -> None:
    """The safety net `cli.main` runs after every command: remove whatever a failed or cancelled run
    staged and did not commit (a committed run has nothing left here)."""
    for outputs in list(_active):
        outputs.discard()


_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR,
                errno.ENOTDIR, errno.EEXIST}


def _no_file_ancestor(folder: Path) -> None:
    anc = _existing_ancestor(folder)
    if anc.exists() and not anc.is_dir():
        raise AxonInputError(anc, f"is a file, so {folder} cannot be created; choose another output location")


class _SignalDuringCommit(Exception):
    """SIGINT/SIGTERM arrived while a commit's renames ran: they are undone, then the signal is raised."""


def _claim(target: Path, tmp: Path) -> None:
    """Put a staged file at a name that was free when the run was planned, without a race: a hard
    link fails if anything has appeared there since (another program, a second AXON run into the same
    new folder), so nothing is ever overwritten that this run did not see. Filesystems without hard
    links fall back to a check and a rename."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise AxonInputError(target, "appeared while this run was computing (another program or a second AXON "
                                     "run wrote it); AXON never replaces it: nothing of this run was kept") from None
    except OSError:
        if target.exists() or target.is_symlink():
            raise AxonInputError(target, "appeared while this run was computing; AXON never replaces it: nothing "
                                         "of this run was kept") from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def _keep_old(target: Path, move: bool = False) -> Path | None:
    """Keep the current file under a hidden name until the commit is done (None if there is none)."""
    if not (target.exists() or target.is_symlink()):
        return None
    backup = target.with_name(f".{target.name}{OLD_TAG}{uuid.uuid4().hex[:8]}")
    if move:
        os.replace(target, backup)
        return backup
    try:
        os.link(target, backup, follow_symlinks=False)
    except OSError:
        shutil.copy2(target, backup, follow_symlinks=False)
    return backup
