"""One exception type for bad user input, so callers (CLI, Slicer panel) can show it verbatim."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class AxonInputError(ValueError):
    """Input that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class AxonRunError(RuntimeError):
    """A run that could not produce anything, for reasons it has already put into words (exit 1)."""


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""Write errors that are the disk's, not the input's: reported in one line, never as a traceback."""


def disk_full_error(exc: BaseException, path: str | Path) -> OSError | None:
    """The ENOSPC a failed write really was, or None. Writers do not all say so: ITK raises a
    RuntimeError of many lines and numpy an OSError without an errno ("N requested and M written");
    a file system left with under 1 MB free decides."""
    import shutil

    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return exc
    try:
        full = shutil.disk_usage(Path(path).parent).free < 1 << 20
    except OSError:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) if full else None


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def refuse_special_path(path: str | Path, what: str = "input") -> None:
    """Refuse, with the true reason, a path that is not a regular file or folder: a FIFO (reading it
    would wait forever), a device such as /dev/zero (endless), a socket, a symbolic link that loops,
    or one that cannot be examined. A missing path passes: the caller says what it expected there."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AxonInputError(p, "is a symbolic link that loops back on itself") from None
        raise AxonInputError(p, f"cannot be examined ({exc.strerror or exc})") from None
    for test, kind in _SPECIAL_FILES:
        if test(mode):
            raise AxonInputError(p, f"is {kind}, not a file; give the {what} file itself")


def itk_reason(exc: BaseException) -> str:
    """ITK's multi-line exception text as one readable line: its ``Reason:`` (or the ``ITK ERROR``
    line without the class and address), never the source file and line it was thrown from."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Reason:"):
            reason = line.removeprefix("Reason:").strip()
            detail = next((x for x in lines if x.startswith("ITK ERROR:")), "")
            detail = detail.split("):", 1)[-1].strip() if detail else ""
            return f"{detail} ({reason})" if detail else reason
    for line in lines:
        if line.startswith("ITK ERROR:"):
            return line.split("):", 1)[-1].strip()[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]
