"""X-ray physics: projection geometry, the DRR renderer, the sparse cone-beam operator with its exact
adjoint, and the simulation of real radiographs (realism augmentation)."""
