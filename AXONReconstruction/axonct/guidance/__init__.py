"""Steering samples towards the input radiographs: per-view calibration, reprojection consistency
in the samplers' guidance hook, the template fit, and the consistency report of a result."""
