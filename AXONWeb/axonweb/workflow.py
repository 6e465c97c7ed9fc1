"""The AXON panel's workflow for the web page, without trame: inputs, options, the background job,
compare, export, segmentation, and one snapshot of what the page shows.

Every piece of work is the Slicer module's own Qt-free logic (`AXONReconstructionLib.logic.
ReconstructionLogic`): the reconstruction and the sample case run in its worker process under the job
protocol, and `compare`, `exportVolume` and `createSegmentation` act on the same MRML scene that
trame-slicer renders. What this module adds is what a browser needs and Slicer does not: files
instead of scene nodes (read with the engine's own readers first, so a bad file gets the command
line's one-line message), option values typed as text (parsed by the options' own argparse types,
so a bad value gets the command line's message too), and a state that every open tab shows.

A job belongs to the server, not to a tab: a second tab sees its progress and cannot start another
(`Busy`); Cancel from any tab stops it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from axonct.errors import AxonInputError
from axonct.options import OPTIONS, ReconstructOptions

from .files import IMAGE_SUFFIXES, ServerFiles, WorkFolder

EXPORT_FORMATS = {"nrrd": "NRRD (.nrrd)", "nifti": "NIfTI (.nii.gz)", "dicom": "DICOM series (a .zip of the folder)"}
SLOT_LABELS = {"frontal": "frontal radiograph", "lateral": "lateral radiograph", "truth": "ground-truth CT"}
ITK_RADIOGRAPH_SUFFIXES = (".dcm", ".dicom", ".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz")
"""Radiographs loaded with Slicer's own reader, so the node keeps its file: the Lib hands an unmodified
DICOM or `axon drr` NRRD to the engine as that file, exactly as the Slicer panel does. PNG, JPEG and
TIFF (which slicer-core cannot read) become nodes from the engine reader's pixels."""
THUMBNAIL_PX = 160
JOB_LABELS = {"reconstruction": "a reconstruction", "sampleCase": "the sample case preparation"}


class Busy(RuntimeError):
    """An action that needs the job slot (or would change inputs a running job uses) while one runs."""


@dataclass
class Input:
    node_id: str
    name: str  # what the page calls it: the uploaded file's name, a path under the data folder, a sample node
    source: str  # "upload", "server" or "sample case"
    thumbnail: str = ""  # a PNG data URL (radiographs)
    owned: bool = True  # loaded for this slot (removed from the scene when replaced)


@dataclass
class JobState:
    kind: str
    started: float = field(default_factory=time.time)
    fraction: float = 0.0
    text: str = ""


def option_defaults() -> dict:
    """The form's starting values: each option's default as the page edits it (numbers as text, an
    unset optional number as '')."""
    values = {}
    for name, spec in OPTIONS.items():
        if spec.kind in ("int", "float"):
            values[name] = "" if spec.default is None else _number_text(spec.default)
        else:
            values[name] = spec.default
    return values


def _number_text(value) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def parse_options(values: dict) -> ReconstructOptions:
    """The form's values -> validated `ReconstructOptions`. Numbers go through each option's own
    argparse type, so a refusal reads as `axon reconstruct` prints it after "error: " (for example
    "argument --steps: 0 is out of range; sampling steps run from 1 to 1000")."""
    unknown = set(values) - set(OPTIONS)
    if unknown:
        raise AxonInputError(None, f"unknown reconstruction options: {', '.join(sorted(unknown))}")
    chosen = {}
    for name, spec in OPTIONS.items():
        value = values.get(name, spec.default)
        if spec.kind in ("int", "float"):
            text = "" if value is None else str(value).strip()
            if text == "" and spec.optional:
                value = None
            else:
                try:
                    value = spec.parse(text)
                except argparse.ArgumentTypeError as exc:
                    raise AxonInputError(None, f"argument {spec.flag}: {exc}") from None
        elif spec.kind == "switch":
            if not isinstance(value, bool):
                try:
                    value = spec.parse(str(value))
                except argparse.ArgumentTypeError as exc:
                    raise AxonInputError(None, f"argument {spec.flag}: {exc}") from None
        else:
            try:
                value = spec.parse(str(value))
            except argparse.ArgumentTypeError as exc:
                raise AxonInputError(None, f"argument {spec.flag}: {exc}") from None
        chosen[name] = value
    return ReconstructOptions(**chosen).validate()


def node_name(name: str) -> str:
    """A scene node's name for a file, as Slicer names a loaded volume: without its extension (the
    reconstruction is named after its inputs, and the Lib's export reads a dot in that name as a file
    type)."""
    base = Path(name.rstrip("/")).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base or "input"


def thumbnail(pixels) -> str:
    """A small PNG (data URL) of a radiograph's pixels, as the engine reads them (display convention)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(pixels, dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    lo, hi = np.percentile(a, (0.5, 99.5))
    a = np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    image = Image.fromarray((a * 255).astype(np.uint8))
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Workflow:
    """The page's state and actions over the Slicer module's logic, on ``slicer.mrmlScene``.

    ``views`` (optional) is told what to show: ``show_volume(node)``, ``show_comparison(recon, truth,
    difference)``, ``show_segmentation(node)``, ``clear()``; the server gives trame-slicer's views."""

    def __init__(self, work: WorkFolder, server_files: ServerFiles | None = None, weights: str | Path | None = None,
                 views=None, logic=None):
        from AXONReconstructionLib.logic import BUNDLED_WEIGHTS, ReconstructionLogic

        self.work = work
        self.server_files = server_files
        self.weights = Path(weights).expanduser().resolve() if weights else BUNDLED_WEIGHTS
        if not self.weights.is_dir():
            raise AxonInputError(self.weights, "is not a weights folder (it must hold the coarse, controlnet and sr "
                                               ".safetensors and .json files)")
        self.views = views
        self.logic = logic or ReconstructionLogic(tempRoot=work.jobs)
        self.inputs: dict[str, Input | None] = {"frontal": None, "lateral": None, "truth": None}
        self.options = option_defaults()
        self.job: JobState | None = None
        self.result_id: str | None = None
        self.report: dict = {}
        self.warnings: list[str] = []
        self.status = "Choose a frontal radiograph (upload, a file on the server, or the sample case)."
        self.error = ""
        self.comparison: dict | None = None
        self.exports: list[dict] = []
        self.segmentation: dict | None = None
        self.revision = 0  # bumped on every change, so a page can tell it has the latest state

    # ------------------------------------------------------------------ helpers
    @property
    def scene(self):
        import slicer

        return slicer.mrmlScene

    def node(self, node_id: str | None):
        return self.scene.GetNodeByID(node_id) if node_id else None

    def _input_node(self, slot: str):
        chosen = self.inputs[slot]
        return self.node(chosen.node_id) if chosen else None

    def result_node(self):
        return self.node(self.result_id)

    def busy_text(self) -> str:
        if self.job is None:
            return ""
        started = time.strftime("%H:%M:%S", time.localtime(self.job.started))
        return (f"AXON is busy: {JOB_LABELS.get(self.job.kind, self.job.kind)} started at {started} is running "
                f"({self.job.fraction * 100:.0f} %); wait for it or press Cancel")

    def _not_busy(self) -> None:
        if self.logic.isRunning():
            raise Busy(self.busy_text())

    def _changed(self) -> None:
        self.revision += 1

    # ------------------------------------------------------------------ inputs
    def choose_upload(self, slot: str, files: list[dict]) -> None:
        """Files sent by the page (size-limited, written under the work folder) as the slot's input."""
        self._not_busy()
        path, name = self.work.save_upload(slot, files)
        self._use_file(slot, path, name, "upload")

    def choose_server_file(self, slot: str, text: str) -> None:
        """A file (or DICOM folder) under the data folder as the slot's input."""
        self._not_busy()
        if self.server_files is None:
            raise AxonInputError(None, "this app serves no files (start it with --data-dir FOLDER)")
        path, name = self.server_files.resolve(text)
        self._use_file(slot, path, name, "server")

    def clear_input(self, slot: str) -> None:
        self._not_busy()
        self._replace(slot, None)
        self.status = f"The {SLOT_LABELS[slot]} was cleared."
        self._changed()

    def _use_file(self, slot: str, path: Path, name: str, source: str) -> None:
        if slot == "truth":
            node = self._load_ct(path, name)
            chosen = Input(node.GetID(), name, source)
        else:
            node, picture = self._load_radiograph(slot, path, name)
            chosen = Input(node.GetID(), name, source, picture)
        self._replace(slot, chosen)
        if slot == "truth" and self.result_node() is None and self.views is not None:
            self.views.show_volume(node, volume_rendering=False)
        self.status = f"{SLOT_LABELS[slot].capitalize()}: {name}."
        self.error = ""
        self._changed()

    def _replace(self, slot: str, chosen: Input | None) -> None:
        old = self.inputs[slot]
        self.inputs[slot] = chosen
        if old is not None and old.owned and all(i is None or i.node_id != old.node_id for i in self.inputs.values()):
            node = self.node(old.node_id)
            if node is not None:
                self.scene.RemoveNode(node)
        if slot == "truth":
            self.comparison = None

    @staticmethod
    def _named(exc: AxonInputError, path: Path, name: str) -> AxonInputError:
        """The engine's refusal with the file called what the page calls it (not a server path)."""
        if exc.path and Path(exc.path) in (path, path.resolve()):
            return AxonInputError(name, exc.problem)
        if exc.path:
            return AxonInputError(str(exc.path).replace(str(path), name), exc.problem)
        return AxonInputError(name, exc.problem)

    def _load_radiograph(self, slot: str, path: Path, name: str):
        """Read with the engine's reader (the command line's checks and messages), then into the scene."""
        import numpy as np
        import slicer

        from AXONReconstructionLib import mrmlio
        from axonct.io.radiograph import read_radiograph

        try:
            radiograph = read_radiograph(path, view=slot)
        except AxonInputError as exc:
            raise self._named(exc, path, name) from None
        node = None
        if path.name.lower().endswith(ITK_RADIOGRAPH_SUFFIXES):
            volumes = slicer.vtkSlicerVolumesLogic()
            volumes.SetMRMLScene(self.scene)
            node = volumes.AddArchetypeVolume(str(path), self.scene.GenerateUniqueName(node_name(name)), 4)  # 4: one file
            if node is not None and len(slicer.util.arrayFromVolume(node).shape) != 3:
                self.scene.RemoveNode(node)
                node = None
        if node is None:  # PNG/JPEG/TIFF, or a file Slicer cannot read: the engine reader's pixels
            node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                self.scene.GenerateUniqueName(node_name(name)))
            pixels = np.asarray(radiograph.pixels, dtype=np.float32)
            slicer.util.updateVolumeFromArray(node, pixels[np.newaxis])
            spacing = radiograph.pixel_spacing_mm or (1.0, 1.0)
            node.SetSpacing(float(spacing[1]) if len(spacing) > 1 else 1.0, float(spacing[0]), 1.0)
        try:
            mrmlio.radiographPixels(node)  # the Lib's own check: a single 2-D image
        except ValueError as exc:
            self.scene.RemoveNode(node)
            raise AxonInputError(name, str(exc).replace(f"'{node.GetName()}' ", "")) from None
        return node, thumbnail(radiograph.pixels)

    def _load_ct(self, path: Path, name: str):
        """The engine's CT reader (the checks of `axon evaluate --gt`: HU, slice gaps, modality...)."""
        from AXONReconstructionLib import mrmlio
        from AXONReconstructionLib.logic import CT_WINDOW_LEVEL
        from axonct.io.ct import read_ct

        try:
            image = read_ct(path)
        except AxonInputError as exc:
            raise self._named(exc, path, name) from None
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(node_name(name)))
        mrmlio.updateVolumeNodeFromImage(node, image)
        mrmlio.setWindowLevel(node, *CT_WINDOW_LEVEL)
        return node

    def start_sample_case(self) -> None:
        """The Slicer Sample Data case (chest CT, its frontal and lateral DRRs, a chest CR) prepared by
        the Lib's sample-case job in the background; `poll` fills the slots when it is ready."""
        self._not_busy()
        self.logic.startSampleCase(self.work.sample_case)
        self.job = JobState("sampleCase", text="Preparing the sample case (chest CT, its DRRs, a chest CR)...")
        self.status, self.error = self.job.text, ""
        self._changed()

    # ------------------------------------------------------------------ reconstruct
    def set_options(self, values: dict) -> None:
        unknown = set(values) - set(OPTIONS)
        if unknown:
            raise AxonInputError(None, f"unknown reconstruction options: {', '.join(sorted(unknown))}")
        self.options.update(values)
        self._changed()

    def start_reconstruction(self, values: dict | None = None) -> None:
        self._not_busy()
        if values is not None:
            self.set_options(values)
        options = parse_options(self.options)
        frontal = self._input_node("frontal")
        if frontal is None:
            raise AxonInputError(None, "choose a frontal (PA/AP) radiograph first")
        self.logic.startReconstruction(frontal, self._input_node("lateral"), weightsPath=str(self.weights),
                                       options=options)
        self.job = JobState("reconstruction", text="Starting the reconstruction...")
        self.status, self.error = self.job.text, ""
        self._changed()

    def cancel(self) -> bool:
        stopped = self.logic.cancel()
        if stopped:
            kind = self.job.kind if self.job else "reconstruction"
            self.job = None
            self.status = ("Cancelled; nothing was added." if kind == "reconstruction"
                           else "Sample case cancelled; nothing was added.")
            self._changed()
        return stopped

    def poll(self) -> list[dict]:
        """The job's new events applied to the state (never blocks); returns them."""
        events = self.logic.poll()
        for event in events:
            self._apply(event)
        if events:
            self._changed()
        return events

    def _apply(self, event: dict) -> None:
        kind = event["type"]
        if kind == "progress":
            if self.job is not None:
                self.job.fraction, self.job.text = float(event["fraction"]), str(event["text"])
            self.status = str(event["text"])
        elif kind == "message":
            if self.job is not None:
                self.job.text = str(event["text"])
            self.status = str(event["text"])
        elif kind == "done" and event.get("kind") == "sampleCase":
            self.job = None
            self._sample_case_loaded(event["nodes"])
            self.status = f"Sample case loaded ({event.get('text', '')}): press Reconstruct."
        elif kind == "done":
            self.job = None
            self._result_loaded(event)
        elif kind == "error":
            self.job = None
            self.error = str(event["message"])
            self.status = "Failed."
        elif kind == "cancelled":
            self.job = None
            self.status = "Cancelled; nothing was added."

    def _sample_case_loaded(self, nodes: dict) -> None:
        from axonct.io.radiograph import read_radiograph

        for slot, key in (("frontal", "frontal"), ("lateral", "lateral"), ("truth", "ct")):
            node = nodes[key]
            picture = ""
            if slot != "truth":
                storage = node.GetStorageNode()
                if storage is not None and storage.GetFileName():
                    picture = thumbnail(read_radiograph(storage.GetFileName(), view=slot).pixels)
            self._replace(slot, Input(node.GetID(), node.GetName(), "sample case", picture))
        cr = nodes.get("cr")
        if cr is not None:  # the real CR stays in the scene for a user who wants it; not an input
            cr.SetAttribute("AXON.WebSample", "cr")
        if self.views is not None and self.result_node() is None:
            self.views.show_volume(nodes["ct"], volume_rendering=False)

    def _result_loaded(self, event: dict) -> None:
        node = event["volumeNode"]
        self.result_id = node.GetID()
        self.report = dict(event.get("report") or {})
        warnings = event.get("warnings")
        self.warnings = [str(w) for w in (warnings if warnings is not None else self.report.get("warnings", []))]
        self.comparison, self.segmentation = None, None
        self.status = str(event["text"])[0].upper() + str(event["text"])[1:] + ". Research use only."
        if self.views is not None:
            self.views.show_volume(node, volume_rendering=True)

    # ------------------------------------------------------------------ compare, export, segment
    def compare(self) -> dict:
        """The Lib's compare (ground truth on the reconstruction's grid, as `axon evaluate`; difference
        volume; metrics table), shown side by side."""
        self._not_busy()
        result, truth = self.result_node(), self._input_node("truth")
        if result is None:
            raise AxonInputError(None, "reconstruct first: there is no reconstruction to compare")
        if truth is None:
            raise AxonInputError(None, "choose a ground-truth CT to compare with (upload, server file or sample case)")
        outcome = self.logic.compare(result, truth)
        rows = [{"metric": m, "value": _metric_text(v), "unit": u, "convention": c}
                for m, v, u, c in self.logic.metricRows(outcome["metrics"])]
        self.comparison = {"rows": rows, "text": self.logic.metricsText(outcome["metrics"]),
                           "metrics": _jsonable(outcome["metrics"]),
                           "differenceID": outcome["differenceNode"].GetID(),
                           "truthOnGridID": outcome["groundTruthOnGridNode"].GetID(),
                           "tableID": outcome["tableNode"].GetID()}
        self.status, self.error = "Compared with the ground truth: metrics below, views side by side.", ""
        if self.views is not None:
            self.views.show_comparison(result, outcome["groundTruthOnGridNode"], outcome["differenceNode"])
        self._changed()
        return self.comparison

    def export(self, file_format: str) -> dict:
        """The Lib's export into a new folder under ``WORK/exports``; returns {"paths", "download":
        the one file to download (a DICOM series is zipped), "name"}."""
        self._not_busy()
        if file_format not in EXPORT_FORMATS:
            raise AxonInputError(None, f"format must be one of {', '.join(EXPORT_FORMATS)} (got {file_format!r})")
        result = self.result_node()
        if result is None:
            raise AxonInputError(None, "reconstruct first: there is nothing to export")
        folder = self.work.new_export_folder()
        try:
            paths = self.logic.exportVolume(result, folder, file_format)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        download = paths[0]
        if download.is_dir():  # a DICOM series: one zip to download (the folder stays on the server)
            archive = download.with_name(download.name + ".zip")
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
                for member in sorted(download.rglob("*")):
                    if member.is_file() and not member.name.startswith("."):  # not the output policy's manifest
                        z.write(member, Path(download.name) / member.relative_to(download))
            download = archive
        record = {"format": file_format, "paths": [str(p) for p in paths], "download": str(download),
                  "name": download.name, "bytes": download.stat().st_size}
        self.exports.insert(0, record)
        self.status, self.error = f"Exported {', '.join(p.name for p in paths)} to {folder}.", ""
        self._changed()
        return record

    def create_segmentation(self) -> dict:
        """The Lib's body / lungs / bone segments of the reconstruction, with their volumes."""
        self._not_busy()
        result = self.result_node()
        if result is None:
            raise AxonInputError(None, "reconstruct first: there is nothing to segment")
        node = self.logic.createSegmentation(result)
        segments = []
        segmentation = node.GetSegmentation()
        spacing = result.GetSpacing()
        voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(i)
            segments.append({"name": segmentation.GetSegment(segment_id).GetName(),
                             "ml": round(_voxels(node, segment_id) * voxel_ml, 1)})
        self.segmentation = {"nodeID": node.GetID(), "name": node.GetName(), "segments": segments}
        self.status, self.error = (f"Created '{node.GetName()}': " +
                                   ", ".join(f"{s['name']} {s['ml']:.0f} mL" for s in segments) + ".", "")
        if self.views is not None:
            self.views.show_segmentation(node)
        self._changed()
        return self.segmentation

    def close(self) -> None:
        """Stop a running job (its process tree and temporary folder): the server is going away."""
        if self.logic.isRunning():
            self.logic.cancel()
        self.job = None

    # ------------------------------------------------------------------ what the page shows
    def snapshot(self) -> dict:
        result = self.result_node()
        return {
            "revision": self.revision,
            "inputs": {slot: (None if i is None else {"name": i.name, "source": i.source, "thumbnail": i.thumbnail})
                       for slot, i in self.inputs.items()},
            "busy": self.job is not None,
            "busy_text": self.busy_text(),
            "job_kind": self.job.kind if self.job else "",
            "progress": round(100.0 * self.job.fraction, 1) if self.job else 0.0,
            "status": self.status,
            "error": self.error,
            "weights": str(self.weights),
            "result": None if result is None else {"name": result.GetName(), "id": self.result_id},
            "warnings": list(self.warnings),
            "report": _report_summary(self.report) if result is not None else [],
            "comparison": self.comparison,
            "exports": list(self.exports),
            "segmentation": self.segmentation,
        }


def _voxels(segmentation_node, segment_id: str) -> int:
    import numpy as np
    import slicer
    from vtk.util import numpy_support

    labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    image = segmentation_node.GetSegmentation().GetSegment(segment_id).GetRepresentation(labelmap)
    if image is None or image.GetPointData().GetScalars() is None:
        return 0
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return int(np.count_nonzero(values == label))


def _metric_text(value) -> str:
    value = float(value)
    if value != value:
        return "n/a"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _jsonable(value):
    return json.loads(json.dumps(value, default=float))


def _report_summary(report: dict) -> list[dict]:
    """The report's main lines for the page: device and precision, framing per view, agreement."""
    rows = []
    precision = report.get("precision") or {}
    if report.get("device") or precision:
        rows.append({"key": "device", "value": f"{report.get('device', '')} {precision.get('name', '')}".strip(),
                     "detail": str(precision.get("reason", ""))})
    for view, info in (report.get("framing") or {}).items():
        if isinstance(info, dict):
            rows.append({"key": f"framing ({view})", "value": str(info.get("method", "")),
                         "detail": ", ".join(f"{k} {v}" for k, v in info.items()
                                             if k in ("scale", "size_from") and v is not None)})
    for view, c in (report.get("reprojection_consistency") or {}).items():
        if isinstance(c, dict) and c.get("given") and c.get("correlation") is not None:
            rows.append({"key": f"agreement ({view})", "value": f"r = {c['correlation']:.2f}",
                         "detail": "correlation of the reconstruction's projection with the radiograph"})
    return rows
