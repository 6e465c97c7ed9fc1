"""Background work of the AXON panel, without Qt: one job runner for every engine command the panel
starts (`reconstruction.ReconstructionJob`: `axon reconstruct`; `sampledata.SampleCaseJob`: `axon
sample-case`), one job at a time.

A job kind prepares its folder and names the command's arguments; `JobRunner` starts the engine worker
(`python -m axonct.app.cli ...`, `PythonSlicer` in Slicer) in a temporary folder, turns the worker's
protocol events (`axonct.app.protocol`: plan, progress, message, result, error) into events for the
panel's timer (`poll`), and when the worker ends hands the result event to the kind, which loads it
into the scene. The events are the worker's only channel: its stderr goes to a log file that is kept
and named only when the worker failed without saying why (a crash, a bug). Nodes are added only when a
job succeeds; `cancel()` stops the process tree and removes the folder, so nothing is left behind.

From the engine this imports only torch-free modules (`axonct.app.protocol`, and through the kinds
`axonct.options` and `axonct.io.sample_data`), so the GUI process never loads torch.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from axonct.app import protocol

from .process import WorkerProcess

MODULE_DIR = Path(__file__).resolve().parent.parent
"""The scripted module folder; it holds the engine package `axonct`."""

BUNDLED_WEIGHTS = MODULE_DIR / "axonct" / "weights" / "cpu"
"""Same folder as `axonct.pipeline.loading.default_weights_dir()`, without importing the engine (torch)."""

PHASE_LABELS = {
    "template": "Template fit",
    "calibration": "Calibrating the views",
    "coarse": "Stage I (coarse)",
    "fine": "Stage II (fine)",
    "sr": "Stage III (super-resolution)",
    "download": "Finding the sample data",
    "drr": "Computing the sample case's DRRs",
}
STAGE_LABELS = {**PHASE_LABELS, "template_affine": "Template fit (pose)",
                "template_deform": "Template fit (deformation)",
                "download_ct": "Sample chest CT", "download_cr": "Sample chest CR"}


def insideSlicer() -> bool:
    return hasattr(slicer, "app")


def duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def progressText(event: dict, remaining_s: float | None = None) -> str:
    """One status line from a protocol progress event, e.g.
    "Stage II (fine), samples 1-2 of 4, step 7/20, about 12 s left"."""
    phase = event.get("phase") or protocol.phase_of(str(event.get("stage", "")))
    step, total = int(event.get("step", 0)), int(event.get("total", 0))
    if phase == protocol.CALIBRATION:
        target = str(event.get("for_stage", ""))
        text = f"{PHASE_LABELS['calibration']} for {STAGE_LABELS.get(target, target)}"
    else:
        stage = str(event.get("stage", phase))
        text = STAGE_LABELS.get(stage, stage)
    samples, first, batch = int(event.get("samples") or 1), int(event.get("sample") or 1), int(event.get("batch") or 1)
    if samples > 1:
        last = min(samples, first + batch - 1)
        text += f", sample {first} of {samples}" if last == first else f", samples {first}-{last} of {samples}"
    if phase != protocol.CALIBRATION:
        text += f", step {step}/{total}"
    if remaining_s is not None:
        text += f", about {duration(remaining_s)} left"
    return text


@dataclass
class Job:
    """One running worker: its kind (what it is for, how its result loads), process, folder and log,
    and what it has said so far."""

    kind: object  # a job kind: `name`, `arguments(folder)`, `load(result, job)`, optional `explain(message)`
    process: WorkerProcess | None
    tempDir: Path
    log: Path | None = None
    started: float = field(default_factory=time.time)
    plan: protocol.PlanProgress = field(default_factory=protocol.PlanProgress)
    planStarted: float | None = None
    result: dict | None = None  # the worker's result event
    error: dict | None = None  # the worker's error event
    lastFraction: float = 0.0


class JobRunner:
    """Start (`startJob`), follow (`poll`) and cancel one engine worker at a time."""

    def __init__(self, tempRoot: str | Path | None = None, pythonExecutable: str | None = None,
                 environment: dict | None = None):
        self.tempRoot = tempRoot
        self.pythonExecutable = pythonExecutable
        self.extraEnvironment = dict(environment or {})
        self._job: Job | None = None

    # ------------------------------------------------------------------ the worker process
    def workerCommand(self) -> list[str]:
        """The interpreter that runs the engine: PythonSlicer inside Slicer, else this Python."""
        if self.pythonExecutable:
            return [self.pythonExecutable]
        if insideSlicer():
            exe = shutil.which("PythonSlicer")
            if not exe:
                raise RuntimeError("PythonSlicer was not found next to Slicer; cannot start the engine")
            return [exe]
        return [sys.executable]

    def workerEnvironment(self) -> dict:
        if insideSlicer() and not self.pythonExecutable:
            env = dict(slicer.util.startupEnvironment())  # PythonSlicer sets up its own paths
        else:
            env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(MODULE_DIR), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extraEnvironment)
        return env

    def temporaryRoot(self) -> str:
        if self.tempRoot:
            return str(self.tempRoot)
        if insideSlicer():
            return slicer.app.temporaryPath
        return tempfile.gettempdir()

    @staticmethod
    def _checkEngineInstalled() -> None:
        """Fail before starting a worker that could not import the engine (found, not imported: no torch here)."""
        from .dependencies import missingPackages

        missing = missingPackages()
        if missing:
            raise RuntimeError("the AXON engine needs Python packages that are not installed: "
                               + ", ".join(sorted(missing.values())))

    def isRunning(self) -> bool:
        return self._job is not None

    def runningJobKind(self) -> str | None:
        return None if self._job is None else self._job.kind.name

    # ------------------------------------------------------------------ start
    def startJob(self, kind) -> None:
        """Start the engine command of ``kind`` in a new temporary folder; follow it with `poll()`."""
        if self._job is not None:
            raise RuntimeError("a job is already running; cancel it or wait for it to finish")
        self._checkEngineInstalled()
        temp = Path(tempfile.mkdtemp(prefix=f"AXON-{kind.name}-", dir=self.temporaryRoot()))
        log = temp.with_name(temp.name + ".log")
        try:
            args = self.workerCommand() + ["-m", "axonct.app.cli"] + kind.arguments(temp)
            process = WorkerProcess(args, env=self.workerEnvironment(), cwd=str(MODULE_DIR), log=log)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            log.unlink(missing_ok=True)
            raise
        self._job = Job(kind=kind, process=process, tempDir=temp, log=log)

    # ------------------------------------------------------------------ follow
    def poll(self) -> list[dict]:
        """New events since the last call (never blocks). Event dicts have a "type":

        - "progress": phase, stage, stageLabel, sample, samples, batch, step, total, eta_s, fraction
          (of all the job's planned work, 0-1), text;
        - "message": text (what the worker is doing);
        - "done": kind ("reconstruction": volumeNode, uncertaintyNode (or None), report (dict),
          warnings; "sampleCase": nodes), seconds, text;
        - "error": message, returncode, kind;  "cancelled": message.
        After "done", "error" or "cancelled" the job is over and its temporary folder is gone.
        """
        job = self._job
        if job is None:
            return []
        events = []
        for line in job.process.readLines():
            event = protocol.parse_line(line)
            kind = None if event is None else event["event"]
            if kind == "message":
                events.append({"type": "message", "text": str(event["message"])})
            elif kind == "plan":
                job.plan.update(event)
                job.planStarted = time.time()
            elif kind == "progress":
                events.append(self._progressEvent(event, job))
            elif kind == "result":
                job.result = event
            elif kind == "error":
                job.error = event
        if job.process.finished():
            events.append(self._finish(job))
        return events

    def _progressEvent(self, event: dict, job: Job, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        phase = event.get("phase") or protocol.phase_of(str(event.get("stage", "")))
        stage = str(event.get("stage", event.get("for_stage", phase)))
        step, total = int(event.get("step", 0)), max(1, int(event.get("total", 1)))
        fraction = max(job.lastFraction, job.plan.update(event) or 0.0)  # a restarted run (CPU fallback) keeps the bar
        job.lastFraction = fraction
        remaining = None
        if job.planStarted is not None and 0.02 <= fraction < 1.0:
            remaining = (now - job.planStarted) * (1.0 - fraction) / fraction
        elif event.get("eta_s") is not None and step < total:  # too early to extrapolate: the stage's own
            remaining = float(event["eta_s"])
        return {"type": "progress", "phase": phase, "stage": stage, "stageLabel": STAGE_LABELS.get(stage, stage),
                "sample": int(event.get("sample") or 1), "samples": int(event.get("samples") or 1),
                "batch": int(event.get("batch") or 1), "step": step, "total": total, "eta_s": event.get("eta_s"),
                "fraction": fraction, "text": progressText(event, remaining)}

    def _finish(self, job: Job) -> dict:
        rc = job.process.returncode
        keepLog = False
        try:
            if rc == protocol.EXIT_OK and job.result is not None:
                return job.kind.load(job.result, job)
            if rc in protocol.EXIT_CANCELLED:
                return {"type": "cancelled", "message": "the job was stopped; nothing was added"}
            kind = (job.error or {}).get("kind", protocol.error_kind(rc))
            keepLog = job.error is None or kind == "internal"  # the log is what there is to read
            return {"type": "error", "returncode": rc, "kind": kind, "message": self._errorMessage(rc, job)}
        except Exception as exc:  # a result that cannot be loaded is an error of this run, not a crash
            return {"type": "error", "returncode": rc, "kind": "internal",
                    "message": f"could not load the result: {exc}"}
        finally:
            self._job = None
            shutil.rmtree(job.tempDir, ignore_errors=True)
            if not keepLog and job.log is not None:
                job.log.unlink(missing_ok=True)

    @staticmethod
    def _errorMessage(rc: int | None, job: Job) -> str:
        """The worker's error event; without one (a crash before it could send it) the exit code. An
        internal error names the log, where the traceback is."""
        if job.error and job.error.get("message"):
            message = str(job.error["message"])
        elif rc is not None and rc < 0:
            message = f"the engine was killed by signal {-rc}" + \
                (" (often: the computer ran out of memory)" if -rc == 9 else "")
        elif rc == protocol.EXIT_OK:
            message = "the engine ended without reporting a result"
        else:
            message = f"the engine stopped with exit code {rc} before it could report why"
        if job.error is None or job.error.get("kind") == "internal":
            message += f"; its log: {job.log}"
        explain = getattr(job.kind, "explain", None)
        return explain(message) if explain else message

    # ------------------------------------------------------------------ stop, wait
    def cancel(self, grace_s: float = 3.0) -> bool:
        """Stop the running job (the whole process tree) and remove its temporary folder and log.
        Nothing is added to the scene. Returns False when nothing was running."""
        job = self._job
        if job is None:
            return False
        self._job = None
        try:
            job.process.stop(grace_s)
        finally:
            shutil.rmtree(job.tempDir, ignore_errors=True)
            if job.log is not None:
                job.log.unlink(missing_ok=True)
        return True

    def waitForCompletion(self, timeout_s: float | None = None, interval_s: float = 0.2, onEvent=None) -> dict:
        """Poll until the job ends (for scripts and tests); returns the final event.
        On timeout the job is cancelled and TimeoutError raised."""
        deadline = None if timeout_s is None else time.time() + timeout_s
        while True:
            for event in self.poll():
                if onEvent is not None:
                    onEvent(event)
                if event["type"] in ("done", "error", "cancelled"):
                    return event
            if self._job is None:
                raise RuntimeError("no job is running")
            if deadline is not None and time.time() > deadline:
                self.cancel()
                raise TimeoutError(f"the job took longer than {timeout_s:g} s and was cancelled")
            if insideSlicer():
                slicer.app.processEvents()
            time.sleep(interval_s)

    def runJob(self, kind, timeout_s: float | None = None, onEvent=None) -> dict:
        """Start ``kind``, wait for it; returns the "done" event, raises RuntimeError with the worker's message."""
        self.startJob(kind)
        event = self.waitForCompletion(timeout_s, onEvent=onEvent)
        if event["type"] != "done":
            raise RuntimeError(event["message"])
        return event
