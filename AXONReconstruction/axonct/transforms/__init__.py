"""Image preprocessing between a file and a network: percentile normalisation (`normalize`),
grey-value equalisation and matching (`grey_values`) and the square model view (`window`).

Pure array functions: no files (that is io) and no networks (framing by the lung fields is in
pipeline). The layer sits just above core and below io and physics, because the realism simulation
(physics) normalises with the same rule as the model views, and the networks (models) apply the
grey-value transforms to their own input.
"""
