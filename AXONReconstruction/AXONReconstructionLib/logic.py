"""The work behind the AXON panel, without Qt: one facade over the helper modules.

`ReconstructionLogic` is mixed into the module's `AXONReconstructionLogic` (a
ScriptedLoadableModuleLogic) and used directly by tests with `slicer-core`. Each concern lives in its
own module:

- `job`: the background worker processes (reconstruct, prepare the sample case): start, `poll`,
  `cancel`, load the result into the scene;
- `compare`: the ground truth on the reconstruction's grid, difference volume, metrics table;
- `export`: NRRD, NIfTI or DICOM series files;
- `segmentation`: body, lungs and bone segments;
- `sampledata`: the sample case's files.
"""

from __future__ import annotations

from .compare import (DIFFERENCE_WINDOW_LEVEL, REF_DIFFERENCE, REF_METRICS, REF_TRUTH_ON_GRID,  # noqa: F401
                      ComparisonLogic)
from .export import EXPORT_SUFFIX, ExportLogic  # noqa: F401
from .job import (ATTR_REPORT, BUNDLED_WEIGHTS, CT_WINDOW_LEVEL, DEVICES, MODULE_DIR, PRECISIONS,  # noqa: F401
                  REF_UNCERTAINTY, STAGE_LABELS, ReconstructionJobs, _Job, duration, insideSlicer,
                  progressText, reconstructOptions)
from .segmentation import REF_SEGMENTATION, SegmentationLogic  # noqa: F401


class ReconstructionLogic(ReconstructionJobs, ComparisonLogic, ExportLogic, SegmentationLogic):
    """Qt-free AXON work on the current MRML scene (`slicer.mrmlScene`): reconstruct and prepare the
    sample case in the background, compare, export, segment."""
