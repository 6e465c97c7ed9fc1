"""The work behind the AXON panel, without Qt: reconstruct (in a child process), compare, export, segment.

`ReconstructionLogic` is mixed into the module's `AXONReconstructionLogic` (a
ScriptedLoadableModuleLogic) and used directly by tests with `slicer-core`. The reconstruction runs
`python -m axonct.cli reconstruct` (in Slicer: `PythonSlicer`) in a temporary folder; `poll()`
returns progress events for a timer and, when the worker is done, loads the result into the scene.
Nodes are added to the scene only when a run succeeds; `cancel()` stops the process tree and removes
the temporary folder, so a cancelled or failed run leaves nothing behind.
"""

from __future__ import annotations

import importlib
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

import numpy as np

import slicer

from . import mrmlio
from .process import WorkerProcess

MODULE_DIR = Path(__file__).resolve().parent.parent
"""The scripted module folder; it holds the engine package `axonct`."""

BUNDLED_WEIGHTS = MODULE_DIR / "axonct" / "weights" / "cpu"
"""Same folder as `axonct.worker.default_weights_dir()`, without importing the engine (torch)."""

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "bf16", "fp32")  # as `axon reconstruct --precision`
EXPORT_SUFFIX = {"nrrd": ".nrrd", "nifti": ".nii.gz", "dicom": ""}

CT_WINDOW_LEVEL = (1500.0, -400.0)  # lung window: lungs, soft tissue and bone all readable
DIFFERENCE_WINDOW_LEVEL = (1000.0, 0.0)
STAGES = {  # engine stage -> label, share of a run's time (measured: coarse 23 s, fine 38 s, SR 2.6 s)
    "coarse": ("Stage I (coarse)", 0.36),
    "fine": ("Stage II (fine)", 0.60),
    "sr": ("Stage III (super-resolution)", 0.04),
}
_STAGE_RE = re.compile(r"^(?P<stage>\w+)(?: \(sample (?P<k>\d+)/(?P<n>\d+)\))?$")

REF_UNCERTAINTY = "AXONUncertainty"
REF_DIFFERENCE = "AXONDifference"
REF_TRUTH_ON_GRID = "AXONGroundTruthOnGrid"
REF_METRICS = "AXONMetrics"
REF_SEGMENTATION = "AXONSegmentation"
ATTR_REPORT = "AXON.Report"


def insideSlicer() -> bool:
    return hasattr(slicer, "app")


@dataclass
class _Job:
    process: WorkerProcess
    tempDir: Path
    outPath: Path
    name: str
    samples: int
    outputNodeID: str | None
    inputPaths: dict  # temporary file path -> what to call it in messages
    started: float = field(default_factory=time.time)
    stdoutOther: list = field(default_factory=list)
    stderrTail: deque = field(default_factory=lambda: deque(maxlen=60))
    doneSeen: set = field(default_factory=set)


class ReconstructionLogic:
    """Qt-free AXON work on the current MRML scene (`slicer.mrmlScene`)."""

    def __init__(self, tempRoot: str | Path | None = None, pythonExecutable: str | None = None,
                 environment: dict | None = None):
        self.tempRoot = tempRoot
        self.pythonExecutable = pythonExecutable
        self.extraEnvironment = dict(environment or {})
        self._job: _Job | None = None

    # ================================================================== reconstruction
    @staticmethod
    def resolveWeights(weightsPath) -> Path:
        """The weights folder to use: the given one, or the bundled CPU weights when empty."""
        text = str(weightsPath or "").strip()
        if text in ("", "."):
            from axonct.worker import default_weights_dir

            return Path(default_weights_dir())
        return Path(text).expanduser()

    def workerCommand(self) -> list[str]:
        """The interpreter that runs the engine: PythonSlicer inside Slicer, else this Python."""
        if self.pythonExecutable:
            return [self.pythonExecutable]
        if insideSlicer():
            exe = shutil.which("PythonSlicer")
            if not exe:
                raise RuntimeError("PythonSlicer was not found next to Slicer; cannot start the reconstruction")
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
    def sourceFileForRadiograph(node) -> str | None:
        """The DICOM file a radiograph node was read from, when it still holds that file's pixels.

        The engine reads DICOM itself (VOI LUT, MONOCHROME1, pixel spacing, ViewPosition check), and
        Slicer's volume readers keep the stored values (a MONOCHROME1 CR stays inverted), so an
        unmodified DICOM radiograph goes to the engine as its file; anything else as its pixels.
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
            head = f.read(132)
        return path if path.lower().endswith((".dcm", ".dicom")) or head[128:132] == b"DICM" else None

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

    def isRunning(self) -> bool:
        return self._job is not None

    def startReconstruction(self, frontalNode, lateralNode=None, weightsPath=None, steps: int | None = None,
                            samples: int = 1, seed: int = 0, device: str = "auto", outputNode=None,
                            consistency: bool = True, precision: str = "auto") -> None:
        """Start the engine worker on the radiograph nodes; follow it with `poll()`."""
        if self._job is not None:
            raise RuntimeError("a reconstruction is already running; cancel it or wait for it to finish")
        if frontalNode is None:
            raise ValueError("choose a frontal (PA/AP) radiograph")
        if lateralNode is not None and lateralNode.GetID() == frontalNode.GetID():
            raise ValueError("the lateral radiograph is the same image as the frontal one")
        for node in (frontalNode, lateralNode):
            if node is not None and node.GetImageData() is None:
                raise ValueError(f"'{node.GetName()}' has no image data")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if int(samples) < 1:
            raise ValueError("samples must be at least 1")
        weights = self.resolveWeights(weightsPath)
        if not weights.is_dir():
            raise ValueError(f"weights folder not found: {weights} (it must hold the coarse, controlnet "
                             "and sr .safetensors and .json files)")
        importlib.import_module("axonct.pipeline")  # fail here, with a traceback, if the engine cannot load

        temp = Path(tempfile.mkdtemp(prefix="AXON-", dir=self._tempRoot()))
        try:
            inputs = {"frontal": self._radiographFile(frontalNode, temp, "frontal")}
            names = {str(inputs["frontal"]): f"'{frontalNode.GetName()}'"}
            if lateralNode is not None:
                inputs["lateral"] = self._radiographFile(lateralNode, temp, "lateral")
                names[str(inputs["lateral"])] = f"'{lateralNode.GetName()}'"
            out = temp / "reconstruction.nrrd"
            args = self.workerCommand() + ["-m", "axonct.cli", "reconstruct", "--frontal", str(inputs["frontal"])]
            if "lateral" in inputs:
                args += ["--lateral", str(inputs["lateral"])]
            args += ["--out", str(out), "--weights", str(weights), "--samples", str(int(samples)),
                     "--seed", str(int(seed)), "--device", device, "--precision", precision,
                     "--consistency", "on" if consistency else "off"]
            if steps:
                args += ["--steps", str(int(steps))]
            process = WorkerProcess(args, env=self.workerEnvironment(), cwd=str(MODULE_DIR))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self._job = _Job(process=process, tempDir=temp, outPath=out, name=self.outputName(frontalNode, lateralNode),
                         samples=int(samples), outputNodeID=outputNode.GetID() if outputNode is not None else None,
                         inputPaths=names)

    def poll(self) -> list[dict]:
        """New events since the last call (never blocks). Event dicts have a "type":

        - "progress": stage, stageLabel, sample, samples, step, total, eta_s, fraction (whole run, 0-1), text;
        - "message": text (what the worker is doing);
        - "done": volumeNode, uncertaintyNode (or None), report (dict), seconds, text;
        - "error": message, returncode;  "cancelled": message.
        After "done", "error" or "cancelled" the run is over and the temporary folder is gone.
        """
        job = self._job
        if job is None:
            return []
        from axonct.pipeline import parse_progress_line

        events = []
        for tag, line in job.process.readLines():
            if tag == "err":
                job.stderrTail.append(line)
                continue
            event = parse_progress_line(line)
            if event is None:
                job.stdoutOther.append(line)
            elif "message" in event:
                events.append({"type": "message", "text": str(event["message"])})
            elif "stage" in event:
                events.append(self._progressEvent(event, job))
        if job.process.finished():
            events.append(self._finish(job))
        return events

    def _progressEvent(self, event: dict, job: _Job) -> dict:
        m = _STAGE_RE.match(str(event.get("stage", "")))
        stage = m.group("stage") if m else str(event.get("stage"))
        k = int(m.group("k")) if m and m.group("k") else 1
        n = int(m.group("n")) if m and m.group("n") else job.samples
        step, total = int(event.get("step", 0)), max(1, int(event.get("total", 1)))
        label, _ = STAGES.get(stage, (stage, 0.0))
        done_before = sum(share for name, (_, share) in STAGES.items()
                          if list(STAGES).index(name) < list(STAGES).index(stage)) if stage in STAGES else 0.0
        within = done_before + STAGES.get(stage, ("", 0.0))[1] * min(step, total) / total
        fraction = min(1.0, ((k - 1) + within) / max(1, n))
        eta = event.get("eta_s")
        text = f"{label}" + (f", sample {k}/{n}" if n > 1 else "") + f": step {step}/{total}"
        if eta is not None and step < total:
            text += f", about {_duration(float(eta))} left in this stage"
        return {"type": "progress", "stage": stage, "stageLabel": label, "sample": k, "samples": n,
                "step": step, "total": total, "eta_s": eta, "fraction": fraction, "text": text}

    def _finish(self, job: _Job) -> dict:
        rc = job.process.returncode
        try:
            if rc == 0:
                return self._loadResults(job)
            if rc in (130, 143):
                return {"type": "cancelled", "message": "the reconstruction was stopped; nothing was added"}
            return {"type": "error", "returncode": rc, "message": self._errorMessage(rc, job)}
        except Exception as exc:  # a result that cannot be loaded is an error of this run, not a crash
            return {"type": "error", "returncode": rc, "message": f"could not load the result: {exc}"}
        finally:
            self._job = None
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def _errorMessage(self, rc: int, job: _Job) -> str:
        lines = [ln.strip() for ln in job.stderrTail if ln.strip()]
        message = None
        for ln in reversed(lines):
            if "reconstruct: error:" in ln:
                message = ln.split("reconstruct: error:", 1)[1].strip()
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
        if rc == 3:
            message = "out of memory: " + message
        return message

    def _finalReport(self, job: _Job) -> dict:
        for line in reversed(job.stdoutOther):
            try:
                data = json.loads(line)
            except (json.JSONDecodeError, ValueError):
                continue
            if isinstance(data, dict) and data.get("done"):
                return data
        return {"files": {"volume": str(job.outPath)}}

    def _loadResults(self, job: _Job) -> dict:
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
        text = f"done in {_duration(seconds)}: '{node.GetName()}'"
        consistency = report.get("reprojection_consistency") or {}
        agree = [f"{v} r={c['correlation']:.2f}" for v, c in consistency.items()
                 if isinstance(c, dict) and c.get("given") and c.get("correlation") is not None]
        if agree:
            text += "; agreement with the radiographs (correlation of reprojections): " + ", ".join(agree)
        precision = report.get("precision") or {}
        if precision.get("name"):
            text += f"; {report.get('device', '')} {precision['name']} ({precision.get('reason', '')})"
        return {"type": "done", "volumeNode": node, "uncertaintyNode": std_node, "report": report,
                "seconds": seconds, "text": text}

    def cancel(self, grace_s: float = 3.0) -> bool:
        """Stop a running reconstruction (the whole process tree) and remove its temporary folder.
        Nothing is added to the scene. Returns False when nothing was running."""
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
        """Poll until the run ends (for scripts and tests); returns the final event.
        On timeout the run is cancelled and TimeoutError raised."""
        deadline = None if timeout_s is None else time.time() + timeout_s
        while True:
            for event in self.poll():
                if onEvent is not None:
                    onEvent(event)
                if event["type"] in ("done", "error", "cancelled"):
                    return event
            if self._job is None:
                raise RuntimeError("no reconstruction is running")
            if deadline is not None and time.time() > deadline:
                self.cancel()
                raise TimeoutError(f"the reconstruction took longer than {timeout_s:g} s and was cancelled")
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

    # ================================================================== sample data
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

    def loadSampleCase(self, cacheDir=None, allowDownload: bool = True, log=None, progress=None) -> dict:
        """The sample case into the scene: the real chest CT (ground truth), its frontal and lateral DRRs
        (computed by the engine in a child process) and a real chest CR. Local copies are used first;
        missing files are downloaded over HTTPS with SHA-256 checks (see `sampledata`).
        Returns {"ct", "frontal", "lateral", "cr"} -> node; nothing is added when a step fails."""
        from . import sampledata

        cache = Path(cacheDir) if cacheDir else Path(self._tempRoot()) / "AXON-sample-data"
        ct_path = sampledata.sampleCT(cache, allowDownload, progress, log)
        cr_path = sampledata.sampleCR(cache, allowDownload, progress, log)
        drr_paths = sampledata.sampleDRRs(ct_path, cache, self.workerCommand(), self.workerEnvironment(),
                                          cwd=str(MODULE_DIR), log=log)
        added = []
        try:
            nodes = {"ct": self._addVolumeFromFile(ct_path, sampledata.CT_NODE)}
            added.append(nodes["ct"])
            mrmlio.setWindowLevel(nodes["ct"], *CT_WINDOW_LEVEL)
            for view, path in drr_paths.items():
                nodes[view] = self._addVolumeFromFile(path, sampledata.DRR_NODES[view])
                added.append(nodes[view])
            nodes["cr"] = self._addVolumeFromFile(cr_path, sampledata.CR_NODE)
            added.append(nodes["cr"])
        except BaseException:
            for node in added:
                slicer.mrmlScene.RemoveNode(node)
            raise
        return nodes

    # ================================================================== comparison
    def compare(self, reconstructionNode, groundTruthNode) -> dict:
        """Ground truth -> the reconstruction's model grid exactly as `axon evaluate` does
        (`evaluation.ground_truth_on_grid`: body-centred cube, anti-aliased, bed removed), then
        `evaluation.compare`. Adds (or updates) a difference volume, the ground truth on the grid and a
        metrics table, all referenced from the reconstruction node."""
        import SimpleITK as sitk

        from axonct.ct_preprocess import hu_to_unit, unit_to_hu
        from axonct.errors import AxonInputError
        from axonct.evaluation import compare, ground_truth_on_grid

        if groundTruthNode is None:
            raise ValueError("choose a ground-truth CT volume")
        grid = mrmlio.modelGridOf(reconstructionNode)
        pred_unit = hu_to_unit(slicer.util.arrayFromVolume(reconstructionNode).astype(np.float32), grid)
        temp = Path(tempfile.mkdtemp(prefix="AXON-compare-", dir=self._tempRoot()))
        try:
            path = temp / "ground_truth.nrrd"
            sitk.WriteImage(mrmlio.imageFromVolumeNode(groundTruthNode, np.float32), str(path), False)
            try:
                gt_unit = ground_truth_on_grid(path, grid)
            except AxonInputError as exc:
                raise ValueError(f"ground truth '{groundTruthNode.GetName()}' {exc.problem}") from None
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        metrics = compare(pred_unit, gt_unit, grid)
        pred_hu, gt_hu = unit_to_hu(pred_unit, grid), unit_to_hu(gt_unit, grid)

        name = reconstructionNode.GetName()
        truth = self._referencedVolume(reconstructionNode, REF_TRUTH_ON_GRID, f"{groundTruthNode.GetName()} on AXON grid")
        mrmlio.copyGeometry(reconstructionNode, truth, gt_hu.astype(np.float32))
        mrmlio.setWindowLevel(truth, *CT_WINDOW_LEVEL)
        diff = self._referencedVolume(reconstructionNode, REF_DIFFERENCE, f"{name} minus ground truth (HU)")
        mrmlio.copyGeometry(reconstructionNode, diff, (pred_hu - gt_hu).astype(np.float32))
        mrmlio.setWindowLevel(diff, *DIFFERENCE_WINDOW_LEVEL)
        table = self._metricsTable(reconstructionNode, metrics, f"{name} metrics")
        return {"metrics": metrics, "differenceNode": diff, "groundTruthOnGridNode": truth, "tableNode": table}

    @staticmethod
    def _referencedVolume(owner, role: str, name: str):
        node = owner.GetNodeReference(role)
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            scene = slicer.mrmlScene
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
            owner.SetNodeReferenceID(role, node.GetID())
        return node

    @staticmethod
    def metricRows(metrics: dict) -> list[tuple[str, float, str, str]]:
        h, x = metrics["honest"], metrics["x2ct"]
        body = metrics.get("mae_hu_body")
        return [
            ("PSNR (honest)", h["psnr"], "dB", h["convention"]),
            ("SSIM (honest)", h["ssim"], "", h["convention"]),
            ("PSNR (X2CT convention)", x["psnr"], "dB", x["convention"]),
            ("SSIM (X2CT convention)", x["ssim"], "", x["convention"]),
            ("MAE", metrics["mae_hu"], "HU", "whole cube"),
            ("MAE inside the body", float("nan") if body is None else body, "HU", "ground truth above -500 HU"),
        ]

    def _metricsTable(self, owner, metrics: dict, name: str):
        import vtk

        table_node = owner.GetNodeReference(REF_METRICS)
        if table_node is None:
            scene = slicer.mrmlScene
            table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
            owner.SetNodeReferenceID(REF_METRICS, table_node.GetID())
        rows = self.metricRows(metrics)
        columns = [("Metric", vtk.vtkStringArray), ("Value", vtk.vtkDoubleArray), ("Unit", vtk.vtkStringArray),
                   ("Convention", vtk.vtkStringArray)]
        table = table_node.GetTable()
        wasModifying = table_node.StartModify()
        while table.GetNumberOfColumns():
            table.RemoveColumn(0)
        for c, (title, kind) in enumerate(columns):
            array = kind()
            array.SetName(title)
            array.SetNumberOfValues(len(rows))
            for r, row in enumerate(rows):
                array.SetValue(r, float(row[c]) if kind is vtk.vtkDoubleArray else str(row[c]))
            table.AddColumn(array)
        table.Modified()
        table_node.Modified()
        table_node.EndModify(wasModifying)
        return table_node

    @staticmethod
    def metricsText(metrics: dict) -> str:
        h, x = metrics["honest"], metrics["x2ct"]
        body = metrics.get("mae_hu_body")
        text = (f"PSNR {h['psnr']:.2f} dB, SSIM {h['ssim']:.3f} (honest: 3D, whole volume)\n"
                f"PSNR {x['psnr']:.2f} dB, SSIM {x['ssim']:.3f} (X2CT papers' convention)\n"
                f"MAE {metrics['mae_hu']:.0f} HU")
        if body is not None:
            text += f", inside the body {body:.0f} HU"
        return text

    # ================================================================== export
    @staticmethod
    def safeFileName(name: str) -> str:
        cleaned = re.sub(r"[^\w.-]+", "_", name).strip("._")
        return cleaned or "AXON_reconstruction"

    def exportVolume(self, volumeNode, directory, fileFormat: str = "nrrd", includeUncertainty: bool = True) -> list[Path]:
        """Write the volume (and its SD map, if any) with the engine's writer: NRRD, NIfTI (.nii.gz)
        or a DICOM CT series folder (derived, research-use series description). Returns the paths."""
        from axonct.errors import AxonInputError
        from axonct.volume_export import sibling, write_volume

        if volumeNode is None:
            raise ValueError("choose a volume to export")
        if fileFormat not in EXPORT_SUFFIX:
            raise ValueError(f"format must be one of {sorted(EXPORT_SUFFIX)}, not {fileFormat!r}")
        text = str(directory or "").strip()
        if text in ("", "."):
            raise ValueError("choose an output folder")
        folder = Path(text).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (self.safeFileName(volumeNode.GetName()) + EXPORT_SUFFIX[fileFormat])
        written = []
        try:
            written.append(write_volume(mrmlio.imageFromVolumeNode(volumeNode, np.float32), path))
            std = volumeNode.GetNodeReference(REF_UNCERTAINTY) if includeUncertainty else None
            if std is not None:
                written.append(write_volume(mrmlio.imageFromVolumeNode(std, np.float32), sibling(path, "std"),
                                            "AXON voxel-wise standard deviation"))
        except AxonInputError as exc:
            raise ValueError(f"cannot export '{volumeNode.GetName()}': {exc.problem}") from None
        return [Path(p) for p in written]

    # ================================================================== segmentation
    @staticmethod
    def _ensureSegmentationConverters() -> None:
        """Slicer registers these at start-up; bare slicer-core does not (harmless to repeat the check)."""
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        rules = factory.GetConverterRules()
        if rules is None or len(rules) == 0:
            factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
            factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())

    def createSegmentation(self, volumeNode, segmentationNode=None):
        """Body, lungs and bone from thresholds (see `segmentation`), as segments of a segmentation
        node on the volume's grid (created, or reused from an earlier call)."""
        import vtk
        from vtk.util import numpy_support

        from .segmentation import SEGMENTS, threshold_masks

        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("choose a reconstruction volume first")
        hu = slicer.util.arrayFromVolume(volumeNode)
        ijk_to_ras = mrmlio.ijkToRas(volumeNode, world=False)
        spacing_ijk = volumeNode.GetSpacing()
        axial_ijk = int(np.argmax(np.abs(ijk_to_ras[2, :3])))  # index axis closest to superior
        masks = threshold_masks(hu, tuple(reversed(spacing_ijk)), axial_axis=2 - axial_ijk)

        self._ensureSegmentationConverters()
        scene = slicer.mrmlScene
        if segmentationNode is None:
            segmentationNode = volumeNode.GetNodeReference(REF_SEGMENTATION)
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(volumeNode.GetName() + " segmentation"))
            volumeNode.SetNodeReferenceID(REF_SEGMENTATION, segmentationNode.GetID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        dims = volumeNode.GetImageData().GetDimensions()
        matrix = mrmlio.arrayToMatrix(ijk_to_ras)
        for name, color in SEGMENTS:
            old = segmentation.GetSegmentIdBySegmentName(name)
            if old:
                segmentation.RemoveSegment(old)
            image = slicer.vtkOrientedImageData()
            image.SetDimensions(*dims)
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            image.SetImageToWorldMatrix(matrix)
            voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(hu.shape)
            voxels[:] = masks[name].astype(np.uint8)
            segment = slicer.vtkSegment()
            segment.SetName(name)
            segment.SetColor(*color)
            segment.AddRepresentation(labelmap_name, image)
            segmentation.AddSegment(segment, name)
        segmentationNode.CreateDefaultDisplayNodes()
        return segmentationNode


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"
