"""Helpers of the AXON Reconstruction Slicer module.

Everything here works without Qt (so it runs and is tested with `slicer-core` from pip):

- `process`: the engine worker as a child process, followed without blocking, cancellable;
- `job`: the background jobs (reconstruction, sample-case preparation): start, poll, cancel, load the
  result; the worker is started with `axonct.options.ReconstructOptions(...).to_cli_args()` and
  followed through `axonct.app.protocol` (plan, progress, result and error events; exit codes);
- `compare`: the ground truth on the reconstruction's grid, a difference volume and a metrics table;
- `export`: the reconstruction as NRRD, NIfTI or a DICOM series;
- `segmentation`: body / lungs / bone masks from a HU volume, and as segments in the scene;
- `mrmlio`: volume nodes <-> SimpleITK images with the LPS/RAS convention handled in one place;
- `logic`: `ReconstructionLogic`, the facade over these that the module's logic class extends;
- `dependencies`, `sampledata`: which Python packages are missing, the sample case's files.

Loading the module and running a job need no torch in the GUI process: `job` imports only
`axonct.options` and `axonct.app.protocol` from the engine; `compare` and `export` import engine
parts (compare: with torch) only when their button is used.
"""
