"""The reconstruction job: radiograph nodes and the panel's options -> `axon reconstruct` in a worker
-> the volume (and its standard deviation) in the scene.

The options reach the worker as one JSON document (`ReconstructOptions.to_json`, read back and
checked by the engine with `--options`), the radiographs as files: an unmodified DICOM or an `axon drr`
NRRD as its own file (the engine reads its header's geometry, as on the command line), any other node
as its pixels.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import slicer

from axonct.app import protocol
from axonct.options import ReconstructOptions

from . import mrmlio
from .job import BUNDLED_WEIGHTS, duration

RECONSTRUCTION = "reconstruction"
REF_UNCERTAINTY = "AXONUncertainty"
ATTR_REPORT = "AXON.Report"
HEADER_BYTES = 65536
"""How much of a radiograph file is read to recognise DICOM or an AXON view-geometry header."""


def resolveWeights(weightsPath) -> Path:
    """The weights folder to use: the given one, or the bundled CPU weights when empty."""
    text = str(weightsPath or "").strip()
    if text in ("", "."):
        return BUNDLED_WEIGHTS
    return Path(text).expanduser()


def outputName(frontalNode, lateralNode=None) -> str:
    names = [frontalNode.GetName()] + ([lateralNode.GetName()] if lateralNode is not None else [])
    return "AXON CT from " + " + ".join(names)


def sourceFileForRadiograph(node) -> str | None:
    """The file a radiograph node was read from, when it still holds that file's pixels and the file
    says more than its pixels: a DICOM file, or an image whose header carries AXON's view geometry
    (`axon drr`'s NRRDs, the sample case's DRRs).

    The engine reads DICOM itself (VOI LUT, MONOCHROME1, pixel spacing, ViewPosition check), and
    Slicer's volume readers keep the stored values (a MONOCHROME1 CR stays inverted); an `axon drr`
    header's source distances let the engine frame the view physically, as `axon reconstruct` does on
    the same file (a node's pixels alone would be framed by their lung fields). Anything else goes to
    the engine as its pixels.
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


class ReconstructionJob:
    """One `axon reconstruct` run for the job runner: checked before any process starts."""

    name = RECONSTRUCTION

    def __init__(self, frontalNode, lateralNode=None, weightsPath=None, options: ReconstructOptions | None = None,
                 outputNode=None):
        if frontalNode is None:
            raise ValueError("choose a frontal (PA/AP) radiograph")
        if lateralNode is not None and lateralNode.GetID() == frontalNode.GetID():
            raise ValueError("the lateral radiograph is the same image as the frontal one")
        for node in (frontalNode, lateralNode):
            if node is not None and node.GetImageData() is None:
                raise ValueError(f"'{node.GetName()}' has no image data")
        self.options = (options or ReconstructOptions()).validate()
        self.weights = resolveWeights(weightsPath)
        if not self.weights.is_dir():
            raise ValueError(f"weights folder not found: {self.weights} (it must hold the coarse, controlnet "
                             "and sr .safetensors and .json files)")
        self.nodes = {"frontal": frontalNode, "lateral": lateralNode}
        self.outputNodeID = outputNode.GetID() if outputNode is not None else None
        self.outputName = outputName(frontalNode, lateralNode)
        self.inputNames: dict[str, str] = {}  # temporary file path -> how messages name it

    def arguments(self, folder: Path) -> list[str]:
        """Writes the inputs and the options document into ``folder``; the `axon` arguments."""
        args = ["reconstruct"]
        for view, node in self.nodes.items():
            if node is None:
                continue
            path = sourceFileForRadiograph(node)
            if path is None:
                path = folder / f"{view}.nrrd"
                mrmlio.writeRadiograph(node, path)
            self.inputNames[str(path)] = f"'{node.GetName()}'"
            args += [f"--{view}", str(path)]
        document = folder / "options.json"
        document.write_text(self.options.to_json(), encoding="utf-8")
        return args + ["--out", str(folder / "reconstruction.nrrd"), "--weights", str(self.weights),
                       "--options", str(document)]

    def explain(self, message: str) -> str:
        """A worker's message with its temporary input files named after their nodes."""
        for path, name in self.inputNames.items():
            message = message.replace(path, name)
        return message

    def load(self, result: dict, job) -> dict:
        """The result event's files into the scene: the volume (into the chosen output node, else a new
        one), its report as an attribute, and with several samples the standard deviation."""
        import SimpleITK as sitk

        files = result["files"]
        if not Path(files["volume"]).is_file():
            raise RuntimeError(f"the worker reported success but wrote no volume ({Path(files['volume']).name})")
        report = json.loads(Path(files["report"]).read_text())
        scene = slicer.mrmlScene
        node = scene.GetNodeByID(self.outputNodeID) if self.outputNodeID else None
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(self.outputName))
        mrmlio.updateVolumeNodeFromImage(node, sitk.ReadImage(str(files["volume"])))
        mrmlio.setWindowLevel(node, *mrmlio.CT_WINDOW_LEVEL)
        node.SetAttribute(ATTR_REPORT, json.dumps(report))
        stdNode = self._loadStd(node, files.get("std"))
        seconds = time.time() - job.started
        warnings = list(result.get("warnings") or [])
        return {"type": "done", "kind": RECONSTRUCTION, "volumeNode": node, "uncertaintyNode": stdNode,
                "report": report, "warnings": warnings, "seconds": seconds,
                "text": self.statusText(node, report, warnings, seconds)}

    @staticmethod
    def _loadStd(node, path):
        if not path or not Path(path).is_file():
            return None
        import numpy as np
        import SimpleITK as sitk

        scene = slicer.mrmlScene
        stdNode = node.GetNodeReference(REF_UNCERTAINTY)
        if stdNode is None:
            stdNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                              scene.GenerateUniqueName(node.GetName() + " SD (HU)"))
        image = sitk.ReadImage(str(path))
        mrmlio.updateVolumeNodeFromImage(stdNode, image)
        top = float(np.percentile(sitk.GetArrayViewFromImage(image), 99.5)) or 1.0
        mrmlio.setWindowLevel(stdNode, top, top / 2)
        node.SetNodeReferenceID(REF_UNCERTAINTY, stdNode.GetID())
        return stdNode

    @staticmethod
    def statusText(node, report: dict, warnings: list, seconds: float) -> str:
        """The status line of a finished run: time, agreement with the inputs, the input checks, each
        warning once, and the precision used."""
        text = f"done in {duration(seconds)}: '{node.GetName()}'"
        consistency = report.get("reprojection_consistency") or {}
        agree = [f"{v} r={c['correlation']:.2f}" for v, c in consistency.items()
                 if isinstance(c, dict) and c.get("given") and c.get("correlation") is not None]
        if agree:
            text += "; agreement with the radiographs (correlation of reprojections): " + ", ".join(agree)
        checks = protocol.report_checks_text(report)
        if checks:
            text += "; " + checks
        if warnings:
            text += ". WARNING: " + "; ".join(warnings)
        precision = report.get("precision") or {}
        if precision.get("name"):
            text += f"; {report.get('device', '')} {precision['name']} ({precision.get('reason', '')})"
        return text
