"""Helpers of the AXON Reconstruction Slicer module.

Everything here works without Qt (so it runs and is tested with `slicer-core` from pip):

- `process`: the engine worker as a child process, followed without blocking, cancellable, its
  stderr in a log file;
- `job`: the job runner: start an engine command, turn its protocol events (`axonct.app.protocol`:
  plan, progress, message, result, error) into the panel's events, cancel, hand the result to the job;
- `reconstruction`: the reconstruction job (`axon reconstruct`, the options as one JSON document from
  `axonct.options.ReconstructOptions`), and loading its volumes;
- `sampledata`: the sample case job (`axon sample-case`), loading its files, the Sample Data entries;
- `panel`: the option widgets' ranges, defaults and tooltips, and the panel's values as options, all
  from the engine's `axonct.options.OPTIONS`;
- `compare`: the ground truth on the reconstruction's grid, a difference volume and a metrics table;
- `export`: the reconstruction as NRRD, NIfTI or a DICOM series;
- `segmentation`: body / lungs / bone masks from a HU volume, and as segments in the scene;
- `mrmlio`: volume nodes <-> SimpleITK images with the LPS/RAS convention handled in one place;
- `logic`: `ReconstructionLogic`, the facade over these that the module's logic class extends;
- `dependencies`: which Python packages are missing.

Loading the module and running a job need no torch in the GUI process: from the engine only
`axonct.options`, `axonct.app.protocol` and `axonct.io.sample_data` are imported; `compare` and
`export` import engine parts (compare: with torch) only when their button is used.
"""
