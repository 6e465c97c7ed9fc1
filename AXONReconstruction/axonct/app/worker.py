"""One command run for a follower process (the Slicer module, a script), under the protocol of
`axonct.app.protocol`: whatever happens, the follower learns it from one event (a result, or an error
with its kind) and the protocol's exit code; people read the same on stderr, in one line.

`axon reconstruct` and `axon sample-case` both run this way, so their followers share one machinery.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable

from axonct.app.protocol import (EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_OOM, EXIT_SIGINT, EXIT_SIGNAL, Cancelled,
                                 ProgressLines)
from axonct.errors import STORAGE_ERRNOS, AxonInputError, AxonRunError
from axonct.io.output_policy import CooperativeSignals, Terminated


def run_for_follower(command: str, work: Callable[[ProgressLines], dict], cooperative: bool = True) -> int:
    """Run ``work(progress) -> {"files": ..., "warnings": [...], ...}`` and report it: the result event,
    or an error event and its exit code. ``cooperative``: SIGINT/SIGTERM only set a flag that
    ``progress`` checks between steps (`Cancelled`); otherwise they raise where the work is (the
    command line's `signals_raise`) and the output policy discards what was staged."""
    with (CooperativeSignals() if cooperative else contextlib.nullcontext()) as signals:
        stop = (lambda: signals.received is not None) if cooperative else (lambda: False)
        progress = ProgressLines(human=sys.stderr.isatty(), should_stop=stop)
        try:
            result = work(progress)
        except Cancelled:
            return _failed(progress, command, "cancelled", "cancelled; no output was written",
                           EXIT_SIGNAL.get(signals.received, EXIT_SIGINT))
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM raised as `Terminated`
            signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
            return _failed(progress, command, "cancelled", "cancelled; nothing partial was kept",
                           EXIT_SIGNAL.get(signum, EXIT_SIGINT))
        except AxonInputError as exc:
            return _failed(progress, command, "input", str(exc), EXIT_INPUT)
        except MemoryError as exc:
            return _failed(progress, command, "oom", str(exc), EXIT_OOM)
        except AxonRunError as exc:
            return _failed(progress, command, "internal", str(exc), EXIT_INTERNAL)
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:
                progress.error("internal", f"{type(exc).__name__}: {exc}")
                raise
            return _failed(progress, command, "input", f"{exc.filename or ''}: could not be written "
                           f"({os.strerror(exc.errno)}); nothing partial was kept", EXIT_INPUT)
        except Exception as exc:  # a bug: the event, then the traceback on stderr (exit code 1)
            progress.error("internal", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            progress.close()
    for warning in result.get("warnings", ()):
        print(f"axon {command}: warning: {warning}", file=sys.stderr)
    progress.result(**result)
    return EXIT_OK


def _failed(progress: ProgressLines, command: str, kind: str, message: str, code: int) -> int:
    """The error event, and the same in one line on stderr for a person; returns the exit code."""
    progress.close()
    progress.error(kind, message, code)
    print(f"axon {command}: {'' if kind == 'cancelled' else 'error: '}{message}", file=sys.stderr)
    return code
