"""The work behind the AXON panel, without Qt: one facade over the helper modules.

`ReconstructionLogic` is mixed into the module's `AXONReconstructionLogic` (a
ScriptedLoadableModuleLogic) and used directly by tests with `slicer-core`. Each concern lives in its
own module:

- `job`: the job runner (start an engine worker, `poll`, `cancel`), shared by the two jobs:
  `reconstruction` (`axon reconstruct`) and `sampledata` (`axon sample-case`);
- `panel`: the panel's widgets and values of the engine's reconstruction options;
- `compare`: the ground truth on the reconstruction's grid, difference volume, metrics table;
- `export`: NRRD, NIfTI or DICOM series files;
- `segmentation`: body, lungs and bone segments.
"""

from __future__ import annotations

from pathlib import Path

from axonct.options import ReconstructOptions

from .compare import (DIFFERENCE_WINDOW_LEVEL, REF_DIFFERENCE, REF_METRICS, REF_TRUTH_ON_GRID,  # noqa: F401
                      ComparisonLogic)
from .export import EXPORT_SUFFIX, ExportLogic  # noqa: F401
from .job import BUNDLED_WEIGHTS, MODULE_DIR, STAGE_LABELS, Job, JobRunner, duration, insideSlicer  # noqa: F401
from .job import progressText  # noqa: F401
from .mrmlio import CT_WINDOW_LEVEL  # noqa: F401
from .reconstruction import (ATTR_REPORT, REF_UNCERTAINTY, ReconstructionJob, outputName,  # noqa: F401
                             resolveWeights, sourceFileForRadiograph)
from .sampledata import SampleCaseJob
from .segmentation import REF_SEGMENTATION, SegmentationLogic  # noqa: F401


class ReconstructionLogic(JobRunner, ComparisonLogic, ExportLogic, SegmentationLogic):
    """Qt-free AXON work on the current MRML scene (`slicer.mrmlScene`): reconstruct and prepare the
    sample case in the background, compare, export, segment."""

    sourceFileForRadiograph = staticmethod(sourceFileForRadiograph)
    outputName = staticmethod(outputName)
    resolveWeights = staticmethod(resolveWeights)

    def startReconstruction(self, frontalNode, lateralNode=None, weightsPath=None, outputNode=None,
                            options: ReconstructOptions | None = None, **optionValues) -> None:
        """Start `axon reconstruct` on the radiograph nodes; follow it with `poll()`. The options are a
        ready `ReconstructOptions`, or its fields as keywords (``steps=2, device="cpu"``: the others
        keep the engine's defaults)."""
        self.startJob(self._reconstructionJob(frontalNode, lateralNode, weightsPath, outputNode, options, optionValues))

    def reconstruct(self, frontalNode, lateralNode=None, weightsPath=None, outputNode=None,
                    options: ReconstructOptions | None = None, timeout_s: float | None = None, **optionValues) -> dict:
        """Blocking reconstruction (arguments as `startReconstruction`): returns the "done" event, raises
        RuntimeError with the worker's message."""
        job = self._reconstructionJob(frontalNode, lateralNode, weightsPath, outputNode, options, optionValues)
        return self.runJob(job, timeout_s)

    @staticmethod
    def _reconstructionJob(frontalNode, lateralNode, weightsPath, outputNode, options, optionValues):
        if options is not None and optionValues:
            raise ValueError(f"give options or option values, not both ({', '.join(optionValues)})")
        options = options if options is not None else ReconstructOptions.from_dict(optionValues)
        return ReconstructionJob(frontalNode, lateralNode, weightsPath, options, outputNode)

    def sampleCacheDir(self, cacheDir=None) -> Path:
        return Path(cacheDir) if cacheDir else Path(self.temporaryRoot()) / "AXON-sample-data"

    def startSampleCase(self, cacheDir=None, allowDownload: bool = True) -> None:
        """Prepare the sample case in a worker (`axon sample-case`: downloads what is missing, computes
        the DRRs once); `poll()` loads it into the scene when ready ("done" event with ``nodes``)."""
        self.startJob(SampleCaseJob(self.sampleCacheDir(cacheDir), allowDownload))

    def loadSampleCase(self, cacheDir=None, allowDownload: bool = True, timeout_s: float | None = None,
                       onEvent=None) -> dict:
        """The sample case into the scene, waiting for it (the panel uses `startSampleCase`): returns
        {"ct", "frontal", "lateral", "cr"} -> node; nothing is added when a step fails."""
        return self.runJob(SampleCaseJob(self.sampleCacheDir(cacheDir), allowDownload), timeout_s, onEvent)["nodes"]
