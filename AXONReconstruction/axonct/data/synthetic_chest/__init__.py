"""The parts of `synthetic_anatomy.SyntheticChestGenerator`, one module per job.

``source``: reading the CT and its label map onto the working cube; ``landmarks``: where the organs
and the rib cage of that source are; ``params``: every random choice of one case; ``deformation``:
the smooth map from an output chest back into the source; ``added``: breasts and arms drawn onto the
output; ``tissue``: densities, noise and the scanner's field of view. The generator composes them.
"""
