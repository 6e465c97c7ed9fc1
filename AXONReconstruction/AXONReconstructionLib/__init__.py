"""Helpers of the AXON Reconstruction Slicer module.

Everything here works without Qt (so it runs and is tested with `slicer-core` from pip):

- `process`: the engine worker as a child process, followed without blocking, cancellable;
- `mrmlio`: volume nodes <-> SimpleITK images with the LPS/RAS convention handled in one place;
- `segmentation`: body / lungs / bone masks from a HU volume;
- `logic`: `ReconstructionLogic`, the work behind the panel (reconstruct, compare, export, segment);
- `dependencies`, `sampledata`: which Python packages are missing, which sample files exist.

The engine (`axonct`) is imported lazily: loading the module in Slicer must not need torch.
"""
