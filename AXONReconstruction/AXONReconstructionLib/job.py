"""Background work of the AXON panel: start, follow and cancel engine worker processes, without Qt.

Two jobs run this way, one at a time: the reconstruction (`python -m axonct.app.cli reconstruct`) and
the sample-case preparation (`python -m AXONReconstructionLib.sampledata`: downloads and DRRs). In
Slicer the interpreter is `PythonSlicer`. Each job runs in its own temporary folder; `poll()` turns the
worker's protocol lines (`axonct.app.protocol`) into events for a timer and, when the worker is done,
loads the result into the scene. Nodes are added only when a job succeeds; `cancel()` stops the
process tree and removes the temporary folder, so a cancelled or failed job leaves nothing behind.

From the engine this module imports only `axonct.options` (the one serialisation of the user's
options: `ReconstructOptions.to_cli_args()`) and `axonct.app.protocol` (events, exit codes); neither
loads torch, so the GUI process never does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from axonct.app import protocol
from axonct.options import ReconstructOptions

from . import mrmlio
from .process import WorkerProcess

MODULE_DIR = Path(__file__).resolve().parent.parent
"""The scripted module folder; it holds the engine package `axonct`."""

BUNDLED_WEIGHTS = MODULE_DIR / "axonct" / "weights" / "cpu"
"""Same folder as `axonct.pipeline.loading.default_weights_dir()`, without importing the engine (torch)."""

DEVICES = ("auto", "cuda", "cpu")  # what the panel offers (`axon reconstruct` also takes cuda:N)
PRECISIONS = ("auto", "bf16", "fp32")  # as `axon reconstruct --precision`

CT_WINDOW_LEVEL = (1500.0, -400.0)  # lung window: lungs, soft tissue and bone all readable
PHASE_LABELS = {
    "template": "Template fit",
    "calibration": "Calibrating the views",
    "coarse": "Stage I (coarse)",
    "fine": "Stage II (fine)",
    "sr": "Stage III (super-resolution)",
    "download": "Downloading sample data",
}
STAGE_LABELS = {**PHASE_LABELS, "template_affine": "Template fit (pose)",
                "template_deform": "Template fit (deformation)"}

REF_UNCERTAINTY = "AXONUncertainty"
ATTR_REPORT = "AXON.Report"
HEADER_BYTES = 65536
"""How much of a radiograph file is read to recognise DICOM or an AXON view-geometry header."""
RECONSTRUCTION, SAMPLE_CASE = "reconstruction", "sampleCase"


def insideSlicer() -> bool:
    return hasattr(slicer, "app")


def reconstructOptions(device: str = "auto", precision: str = "auto", steps: int | None = None, samples: int = 1,
                       seed: int = 0, consistency: bool = True, consistencyStrength: float = 1.0,
                       start: str = "stage1", fineStrength: float | None = None, framing: bool = True,
                       lungFields: bool = True, thoraxWidthMm: float | None = None) -> ReconstructOptions:
    """The panel's values as the engine's `ReconstructOptions` (validated: ValueError names the option).
    The panel's "Default"/"Automatic" values (steps 0, a negative fine strength, a lung-field width of
    0) mean the weights' own defaults or the engine's measurement."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    steps = int(steps) if steps else None
    fine = None if fineStrength is None or float(fineStrength) < 0 else float(fineStrength)
    return ReconstructOptions(device=device, precision=precision, steps=steps, samples=int(samples), seed=int(seed),
                              consistency=bool(consistency), consistency_strength=float(consistencyStrength),
                              start=str(start), fine_strength=fine, framing="auto" if framing else "none",
                              lung_fields=bool(lungFields),
                              thorax_width_mm=float(thoraxWidthMm) if thoraxWidthMm else None).validate()


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
class _Job:
    process: WorkerProcess | None
    tempDir: Path
    outPath: Path | None = None
    name: str = ""
    samples: int = 1
    outputNodeID: str | None = None
    inputPaths: dict = field(default_factory=dict)  # temporary file path -> what to call it in messages
    kind: str = RECONSTRUCTION
    started: float = field(default_factory=time.time)
    plan: protocol.PlanProgress = field(default_factory=protocol.PlanProgress)
    planStarted: float | None = None
    result: dict | None = None  # the worker's result event
    error: dict | None = None  # the worker's error event
    stdoutOther: list = field(default_factory=list)
    stderrTail: deque = field(default_factory=lambda: deque(maxlen=60))
    lastFraction: float = 0.0


class ReconstructionJobs:
    """Start, follow (`poll`) and cancel the worker processes; load their results into the scene."""

    def __init__(self, tempRoot: str | Path | None = None, pythonExecutable: str | None = None,
                 environment: dict | None = None):
        self.tempRoot = tempRoot
        self.pythonExecutable = pythonExecutable
        self.extraEnvironment = dict(environment or {})
        self._job: _Job | None = None

    # ------------------------------------------------------------------ the worker process
    @staticmethod
    def resolveWeights(weightsPath) -> Path:
        """The weights folder to use: the given one, or the bundled CPU weights when empty."""
        text = str(weightsPath or "").strip()
        if text in ("", "."):
            return BUNDLED_WEIGHTS
        return Path(text).expanduser()

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

    def _tempRoot(self) -> str:
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
        return None if self._job is None else self._job.kind

    # ------------------------------------------------------------------ reconstruction inputs
    @staticmethod
    def sourceFileForRadiograph(node) -> str | None:
        """The file a radiograph node was read from, when it still holds that file's pixels and the file
        says more than its pixels: a DICOM file, or an image whose header carries AXON's view geometry
        (`axon drr`'s NRRDs, the sample case's DRRs).

        The engine reads DICOM itself (VOI LUT, MONOCHROME1, pixel spacing, ViewPosition check), and
        Slicer's volume readers keep the stored values (a MONOCHROME1 CR stays inverted); an `axon drr`
        header's source distances let the engine frame the view physically, as `axon reconstruct` does
        on the same file (a node's pixels alone would be framed by their lung fields). Anything else
        goes to the engine as its pixels.
        """
        uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if len(uids) == 1 and database is not None:
            path = database.fileForInstance(uids[0])
            if path and os.path.isfile(path):
                return path
        storage = node.GetStorageNode()
        if storage is None or not storage.GetFileName():
            return None
        if getattr(node, "GetModifiedSinceRead", lambda: True)():
            return None
        if storage.GetNumberOfFileNames() > 1:
            return None
        path = storage.GetFileName()
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
        if path.lower().endswith((".dcm", ".dicom")) or head[128:132] == b"DICM":
            return path
        if path.lower().endswith((".nrrd", ".nhdr", ".mha", ".mhd")) and b"axon_geometry" in head:
            return path
        return None

    def _radiographFile(self, node, folder: Path, view: str) -> Path:
        source = self.sourceFileForRadiograph(node)
        if source:
            return Path(source)
        path = folder / f"{view}.nrrd"
        mrmlio.writeRadiograph(node, path)
        return path

    @staticmethod
    def outputName(frontalNode, lateralNode=None) -> str:
        names = [frontalNode.GetName()] + ([lateralNode.GetName()] if lateralNode is not None else [])
        return "AXON CT from " + " + ".join(names)

    # ------------------------------------------------------------------ start
    def startReconstruction(self, frontalNode, lateralNode=None, weightsPath=None, steps: int | None = None,
                            samples: int = 1, seed: int = 0, device: str = "auto", outputNode=None,
                            consistency: bool = True, precision: str = "auto", consistencyStrength: float = 1.0,
                            start: str = "stage1", fineStrength: float | None = None,
                            options: ReconstructOptions | None = None) -> None:
        """Start the engine worker on the radiograph nodes; follow it with `poll()`. The options are the
        panel's values, or a ready `ReconstructOptions` (``options``, which then replaces them)."""
        if self._job is not None:
            raise RuntimeError("a job is already running; cancel it or wait for it to finish")
        if frontalNode is None:
            raise ValueError("choose a frontal (PA/AP) radiograph")
        if lateralNode is not None and lateralNode.GetID() == frontalNode.GetID():
            raise ValueError("the lateral radiograph is the same image as the frontal one")
        for node in (frontalNode, lateralNode):
            if node is not None and node.GetImageData() is None:
                raise ValueError(f"'{node.GetName()}' has no image data")
        if options is None:
            options = reconstructOptions(device, precision, steps, samples, seed, consistency, consistencyStrength,
                                         start, fineStrength)
        else:
            options.validate()
        weights = self.resolveWeights(weightsPath)
        if not weights.is_dir():
            raise ValueError(f"weights folder not found: {weights} (it must hold the coarse, controlnet "
                             "and sr .safetensors and .json files)")
        self._checkEngineInstalled()

        temp = Path(tempfile.mkdtemp(prefix="AXON-", dir=self._tempRoot()))
        try:
            inputs = {"frontal": self._radiographFile(frontalNode, temp, "frontal")}
            names = {str(inputs["frontal"]): f"'{frontalNode.GetName()}'"}
            if lateralNode is not None:
                inputs["lateral"] = self._radiographFile(lateralNode, temp, "lateral")
                names[str(inputs["lateral"])] = f"'{lateralNode.GetName()}'"
            out = temp / "reconstruction.nrrd"
            args = self.workerCommand() + ["-m", "axonct.app.cli", "reconstruct", "--frontal", str(inputs["frontal"])]
            if "lateral" in inputs:
                args += ["--lateral", str(inputs["lateral"])]
            args += ["--out", str(out), "--weights", str(weights)] + options.to_cli_args()
            process = WorkerProcess(args, env=self.workerEnvironment(), cwd=str(MODULE_DIR))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._job = _Job(process=process, tempDir=temp, outPath=out, name=self.outputName(frontalNode, lateralNode),
                         samples=options.samples, outputNodeID=outputNode.GetID() if outputNode is not None else None,
                         inputPaths=names)

    def startSampleCase(self, cacheDir=None, allowDownload: bool = True) -> None:
        """Prepare the sample case in a worker (download what is missing, compute the DRRs); `poll()`
        loads it into the scene when ready ("done" event with ``nodes``)."""
        if self._job is not None:
            raise RuntimeError("a job is already running; cancel it or wait for it to finish")
        self._checkEngineInstalled()
        cache = Path(cacheDir) if cacheDir else Path(self._tempRoot()) / "AXON-sample-data"
        temp = Path(tempfile.mkdtemp(prefix="AXON-sample-", dir=self._tempRoot()))
        try:
            args = self.workerCommand() + ["-m", "AXONReconstructionLib.sampledata", "--cache", str(cache)]
            if not allowDownload:
                args.append("--no-download")
            process = WorkerProcess(args, env=self.workerEnvironment(), cwd=str(MODULE_DIR))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._job = _Job(process=process, tempDir=temp, name="AXON sample case", kind=SAMPLE_CASE)

    # ------------------------------------------------------------------ follow
    def poll(self) -> list[dict]:
        """New events since the last call (never blocks). Event dicts have a "type":

        - "progress": phase, stage, stageLabel, sample, samples, batch, step, total, eta_s, fraction
          (of all the job's planned work, 0-1), text;
        - "message": text (what the worker is doing);
        - "done": kind ("reconstruction": volumeNode, uncertaintyNode (or None), report (dict);
          "sampleCase": nodes), seconds, text;
        - "error": message, returncode, kind;  "cancelled": message.
        After "done", "error" or "cancelled" the job is over and its temporary folder is gone.
        """
        job = self._job
        if job is None:
            return []
        events = []
        for tag, line in job.process.readLines():
            if tag == "err":
                job.stderrTail.append(line)
                continue
            event = protocol.parse_line(line)
            if event is None:
                job.stdoutOther.append(line)
                continue
            kind = event.get("event")
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

    def _progressEvent(self, event: dict, job: _Job, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        phase = event.get("phase") or protocol.phase_of(str(event.get("stage", "")))
        stage = str(event.get("stage", event.get("for_stage", phase)))
        step, total = int(event.get("step", 0)), max(1, int(event.get("total", 1)))
        fraction = job.plan.update(event)
        if fraction is None:  # no plan (an older worker, a download): this stage alone
            fraction = min(step, total) / total
        fraction = max(job.lastFraction, fraction)  # a restarted run (CPU fallback) does not move the bar back
        job.lastFraction = fraction
        remaining = None
        if job.planStarted is not None and 0.02 <= fraction < 1.0:
            remaining = (now - job.planStarted) * (1.0 - fraction) / fraction
        elif event.get("eta_s") is not None and step < total:
            remaining = float(event["eta_s"])
        return {"type": "progress", "phase": phase, "stage": stage, "stageLabel": STAGE_LABELS.get(stage, stage),
                "sample": int(event.get("sample") or 1), "samples": int(event.get("samples") or job.samples),
                "batch": int(event.get("batch") or 1), "step": step, "total": total, "eta_s": event.get("eta_s"),
                "fraction": fraction, "text": progressText(event, remaining)}

    def _finish(self, job: _Job) -> dict:
        rc = job.process.returncode
        try:
            if rc == protocol.EXIT_OK:
                if job.kind == SAMPLE_CASE:
                    return self._loadSampleCase(job)
                return self._loadResults(job)
            if rc in protocol.EXIT_CANCELLED:
                return {"type": "cancelled", "message": "the job was stopped; nothing was added"}
            return {"type": "error", "returncode": rc, "kind": (job.error or {}).get("kind", protocol.error_kind(rc)),
                    "message": self._errorMessage(rc, job)}
        except Exception as exc:  # a result that cannot be loaded is an error of this run, not a crash
            return {"type": "error", "returncode": rc, "kind": "internal",
                    "message": f"could not load the result: {exc}"}
        finally:
            self._job = None
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def _errorMessage(self, rc: int, job: _Job) -> str:
        """The worker's error event; else (a crash before it could send one) its last stderr line."""
        message = str(job.error["message"]) if job.error and job.error.get("message") else None
        lines = [ln.strip() for ln in job.stderrTail if ln.strip()]
        if message is None:
            for ln in reversed(lines):
                if ": error:" in ln:
                    message = ln.split(": error:", 1)[1].strip()
                    break
        if message is None and lines:
            message = re.sub(r"^[\w.]*(Error|Exception|Interrupt)\s*:\s*", "", lines[-1])
            if "No module named" in lines[-1]:
                message += " (a Python package the engine needs is missing)"
        if rc is not None and rc < 0:
            message = (message + "; " if message else "") + f"the worker was killed by signal {-rc}" + \
                (" (often: the computer ran out of memory)" if -rc == 9 else "")
        if message is None:
            message = f"the worker stopped with exit code {rc} and no message"
        for path, name in job.inputPaths.items():
            message = message.replace(path, name)
        if rc == protocol.EXIT_OOM and not message.startswith("out of memory"):
            message = "out of memory: " + message
        return message

    def _finalReport(self, job: _Job) -> dict:
        if job.result is not None:
            return job.result
        for line in reversed(job.stdoutOther):  # the plain summary line
            try:
                data = json.loads(line)
            except (json.JSONDecodeError, ValueError):
                continue
            if isinstance(data, dict) and data.get("done"):
                return data
        return {"files": {"volume": str(job.outPath)}}

    def _loadResults(self, job: _Job) -> dict:
        import numpy as np
        import SimpleITK as sitk

        final = self._finalReport(job)
        files = final.get("files", {})
        volume_path = Path(files.get("volume", job.outPath))
        if not volume_path.is_file():
            raise RuntimeError(f"the worker reported success but wrote no volume ({volume_path.name})")
        report = {}
        if files.get("report") and Path(files["report"]).is_file():
            report = json.loads(Path(files["report"]).read_text())
        scene = slicer.mrmlScene
        node = scene.GetNodeByID(job.outputNodeID) if job.outputNodeID else None
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(job.name))
        mrmlio.updateVolumeNodeFromImage(node, sitk.ReadImage(str(volume_path)))
        mrmlio.setWindowLevel(node, *CT_WINDOW_LEVEL)
        node.SetAttribute(ATTR_REPORT, json.dumps(report))
        std_node = None
        if files.get("std") and Path(files["std"]).is_file():
            std_node = node.GetNodeReference(REF_UNCERTAINTY)
            if std_node is None:
                std_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                   scene.GenerateUniqueName(node.GetName() + " SD (HU)"))
            std_image = sitk.ReadImage(str(files["std"]))
            mrmlio.updateVolumeNodeFromImage(std_node, std_image)
            top = float(np.percentile(sitk.GetArrayViewFromImage(std_image), 99.5)) or 1.0
            mrmlio.setWindowLevel(std_node, top, top / 2)
            node.SetNodeReferenceID(REF_UNCERTAINTY, std_node.GetID())
        seconds = time.time() - job.started
        text = f"done in {duration(seconds)}: '{node.GetName()}'"
        consistency = report.get("reprojection_consistency") or final.get("reprojection_consistency") or {}
        agree = [f"{v} r={c['correlation']:.2f}" for v, c in consistency.items()
                 if isinstance(c, dict) and c.get("given") and c.get("correlation") is not None]
        if agree:
            text += "; agreement with the radiographs (correlation of reprojections): " + ", ".join(agree)
        checks, warnings = protocol.report_checks_text(report)
        if checks:
            text += "; " + checks
        if warnings:
            text += ". WARNING: " + "; ".join(warnings)
        precision = report.get("precision") or {}
        if precision.get("name"):
            text += f"; {report.get('device', '')} {precision['name']} ({precision.get('reason', '')})"
        return {"type": "done", "kind": RECONSTRUCTION, "volumeNode": node, "uncertaintyNode": std_node,
                "report": report, "seconds": seconds, "text": text}

    def _loadSampleCase(self, job: _Job) -> dict:
        if job.result is None:
            raise RuntimeError("the sample-case worker ended without naming its files")
        nodes = self.addSampleCaseNodes(job.result["files"])
        seconds = time.time() - job.started
        return {"type": "done", "kind": SAMPLE_CASE, "nodes": nodes, "seconds": seconds,
                "text": f"sample case loaded in {duration(seconds)}"}

    # ------------------------------------------------------------------ stop, wait
    def cancel(self, grace_s: float = 3.0) -> bool:
        """Stop the running job (the whole process tree) and remove its temporary folder. Nothing is
        added to the scene. Returns False when nothing was running."""
        job = self._job
        if job is None:
            return False
        self._job = None
        try:
            job.process.stop(grace_s)
        finally:
            shutil.rmtree(job.tempDir, ignore_errors=True)
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

    def reconstruct(self, frontalNode, lateralNode=None, timeout_s: float | None = None, **options) -> dict:
        """Blocking reconstruction: returns the "done" event, raises RuntimeError with the worker's message."""
        self.startReconstruction(frontalNode, lateralNode, **options)
        event = self.waitForCompletion(timeout_s)
        if event["type"] != "done":
            raise RuntimeError(event["message"])
        return event

    # ------------------------------------------------------------------ sample case nodes
    def _addVolumeFromFile(self, path, name: str):
        """A volume file as a scalar volume node (Slicer's readers; in Slicer also into subject hierarchy)."""
        if insideSlicer():
            node = slicer.util.loadVolume(str(path), {"name": name, "show": False, "singleFile": True})
        else:
            volumes = slicer.vtkSlicerVolumesLogic()
            volumes.SetMRMLScene(slicer.mrmlScene)
            node = volumes.AddArchetypeVolume(str(path), name, 4)  # 4: single file
        if node is None:
            raise RuntimeError(f"could not read {path} as a volume")
        return node

    def addSampleCaseNodes(self, files: dict) -> dict:
        """{"ct", "frontal", "lateral", "cr"} -> node, from the prepared files; all or none are added."""
        from . import sampledata

        names = {"ct": sampledata.CT_NODE, **sampledata.DRR_NODES, "cr": sampledata.CR_NODE}
        added, nodes = [], {}
        try:
            for key in ("ct", "frontal", "lateral", "cr"):
                nodes[key] = self._addVolumeFromFile(files[key], names[key])
                added.append(nodes[key])
            mrmlio.setWindowLevel(nodes["ct"], *CT_WINDOW_LEVEL)
        except BaseException:
            for node in added:
                slicer.mrmlScene.RemoveNode(node)
            raise
        return nodes

    def loadSampleCase(self, cacheDir=None, allowDownload: bool = True, log=None, progress=None) -> dict:
        """The sample case into the scene, here and now (blocking; the panel uses `startSampleCase`):
        the real chest CT (ground truth), its frontal and lateral DRRs (computed by the engine in a child
        process) and a real chest CR. Local copies are used first; missing files are downloaded over
        HTTPS with SHA-256 checks (see `sampledata`). Returns {"ct", "frontal", "lateral", "cr"} -> node;
        nothing is added when a step fails."""
        from . import sampledata

        cache = Path(cacheDir) if cacheDir else Path(self._tempRoot()) / "AXON-sample-data"
        files = sampledata.prepareSampleCase(cache, allowDownload, self.workerCommand(), self.workerEnvironment(),
                                             cwd=str(MODULE_DIR), log=log, progress=progress)
        return self.addSampleCaseNodes(files)
