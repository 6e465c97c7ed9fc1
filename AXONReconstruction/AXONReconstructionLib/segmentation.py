"""Body, lungs and bone from a HU volume by thresholds, with simple clean-up (numpy + scipy).

A starting point for the user to refine in Segment Editor, not an anatomical segmentation:
- body: above -500 HU (the skin surface), opened to cut thin bridges, largest connected component,
  holes filled slice by slice along the superior axis (lungs and airways belong to the body);
- lungs: -1024 to -400 HU inside the body (-1024 is the engine's air value), opened, small pieces dropped;
- bone: above 300 HU inside the body, small pieces dropped.
"""

from __future__ import annotations

import numpy as np

BODY_MIN_HU = -500.0
LUNG_HU = (-1024.0, -400.0)
BONE_MIN_HU = 300.0
MIN_LUNG_ML = 5.0  # a piece of "lung" smaller than this is noise or bowel gas
MIN_BONE_ML = 0.5
MORPHOLOGY_MAX_SPACING_MM = 3.0  # coarser grids skip the openings (they would erase thin anatomy)

SEGMENTS = (  # name, colour (RGB 0-1), Slicer-like defaults
    ("body", (0.89, 0.72, 0.58)),
    ("lungs", (0.77, 0.92, 1.0)),
    ("bone", (0.95, 0.84, 0.57)),
)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _drop_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def _fill_holes_per_slice(mask: np.ndarray, axis: int) -> np.ndarray:
    from scipy import ndimage

    out = np.moveaxis(mask.copy(), axis, 0)
    for k in range(out.shape[0]):
        out[k] = ndimage.binary_fill_holes(out[k])
    return np.moveaxis(out, 0, axis)


def threshold_masks(hu: np.ndarray, spacing_mm: tuple[float, float, float], axial_axis: int = 0) -> dict:
    """{"body", "lungs", "bone"} -> bool arrays shaped like `hu` ([k, j, i]).

    `spacing_mm` is per array axis; `axial_axis` is the array axis closest to superior.
    """
    from scipy import ndimage

    hu = np.asarray(hu, dtype=np.float32)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    fine = max(spacing_mm) <= MORPHOLOGY_MAX_SPACING_MM
    cross = ndimage.generate_binary_structure(3, 1)

    body = hu > BODY_MIN_HU
    if fine:
        body = ndimage.binary_opening(body, cross)
    if not body.any():
        raise ValueError(f"no body found: no voxel is above {BODY_MIN_HU:g} HU")
    body = _fill_holes_per_slice(_largest_component(body), axial_axis)

    lungs = (hu >= LUNG_HU[0]) & (hu <= LUNG_HU[1]) & body
    if fine:
        lungs = ndimage.binary_opening(lungs, cross)
    lungs = _drop_small(lungs, max(2, int(round(MIN_LUNG_ML / voxel_ml))))

    bone = (hu > BONE_MIN_HU) & body
    bone = _drop_small(bone, max(2, int(round(MIN_BONE_ML / voxel_ml))))
    return {"body": body, "lungs": lungs, "bone": bone}
