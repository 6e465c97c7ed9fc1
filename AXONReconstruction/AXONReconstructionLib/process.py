"""A child process whose stdout lines are read on a thread, so the GUI never blocks; its stderr goes to
a log file (for a person to read, never parsed).

`WorkerProcess.readLines()` returns what arrived since the last call (for a QTimer in the panel);
`stop()` ends the whole process tree: the worker runs in its own process group (POSIX) or process
group with no console (Windows), because in Slicer the command is the `PythonSlicer` launcher,
which starts the real Python as a child. Killing only the launcher would leave the worker running.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from collections.abc import Sequence


class WorkerProcess:
    """Start `args` now; collect its stdout lines on a reader thread, its stderr in ``log`` (or nowhere)."""

    def __init__(self, args: Sequence[str], env: dict | None = None, cwd: str | None = None, log=None):
        self.args = [str(a) for a in args]
        self._log = open(log, "wb") if log is not None else subprocess.DEVNULL
        kwargs = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True,
                      encoding="utf-8", errors="replace", bufsize=1, env=env, cwd=cwd)
        if os.name == "nt":
            kwargs["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                       | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            kwargs["start_new_session"] = True  # own process group: one signal reaches every child
        try:
            self.proc = subprocess.Popen(self.args, **kwargs)
        finally:
            if log is not None:
                self._log.close()  # the child holds its own handle
        self._queue: queue.Queue = queue.Queue()
        self._open = True
        self._thread = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True, name="AXON-stdout")
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put(line.rstrip("\r\n"))
        except (OSError, ValueError):  # stream closed under us by stop()
            pass
        finally:
            self._queue.put(None)

    def readLines(self) -> list[str]:
        """Stdout lines received since the last call, in order; never blocks."""
        lines = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return lines
            if line is None:
                self._open = False
            else:
                lines.append(line)

    def finished(self) -> bool:
        """True once the process has exited and its stdout is fully read (call readLines first)."""
        return self.proc.poll() is not None and not self._open

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    # ------------------------------------------------------------------ stopping
    def _signal_tree(self, hard: bool) -> None:
        if os.name == "nt":
            self._kill_tree_windows()
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone

    def _kill_tree_windows(self) -> None:
        try:
            import psutil
        except ImportError:
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.proc.pid)], capture_output=True)
            return
        try:
            parent = psutil.Process(self.proc.pid)
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for p in children + [parent]:  # children first, so none is re-parented and left running
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def stop(self, grace_s: float = 3.0) -> int | None:
        """SIGTERM the process group (the engine stops at its next step, writing nothing), then
        SIGKILL whatever is left after `grace_s`. Returns the exit code."""
        if self.proc.poll() is None:
            self._signal_tree(hard=False)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        self._signal_tree(hard=True)  # also reaches grandchildren that outlived the leader
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._thread.join(timeout=5)
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        return self.proc.poll()
