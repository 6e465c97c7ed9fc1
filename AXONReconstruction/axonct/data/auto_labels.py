"""A coarse label map from HU alone, for chest CTs that come without one.

Why: the synthetic-chest generator places its deformations on lungs, domes, heart and spine. Most
CT collections have no label map, and a whole-body segmenter is too heavy a dependency. Thresholds
and connected components give what the generator needs (it never needs lobes or exact organs):

- lungs: the large air components inside the body (bowel gas is far smaller), split into left and
  right at the mediastinum's position; the lower half of each lung stands in for its lower lobe,
  whose base is where the dome is measured;
- spine: bone near the body's midline in its posterior half;
- heart: soft tissue between the lungs in front of the spine, over the lower 60 % of the lungs.

The labelled LIDC-IDRI-0001 case keeps its full label map; this is the fallback.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# ids and groups as in a TotalSegmentator-like structures.csv (names the generator looks up)
STRUCTURES: dict[str, tuple[int, str]] = {
    "lung_upper_lobe_left": (1, "lungs"),
    "lung_lower_lobe_left": (2, "lungs"),
    "lung_upper_lobe_right": (3, "lungs"),
    "lung_middle_lobe_right": (4, "lungs"),  # not separable by HU: stays empty, upper lobe holds it
    "lung_lower_lobe_right": (5, "lungs"),
    "heart": (6, "cardiac"),
    "spine": (7, "vertebrae"),
}

LUNG_BELOW_HU = -400.0
BODY_ABOVE_HU = -500.0
BONE_ABOVE_HU = 180.0
SOFT_HU = (-120.0, 250.0)
MIN_LUNG_SHARE = 0.1  # an air component counts as lung if it holds this share of the largest one
MIN_LUNG_ML = 150.0
SPINE_HALF_WIDTH_MM = 28.0


class NoLungsError(ValueError):
    """The CT holds no air component large enough to be a lung."""


def auto_label_map(hu: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, dict[str, tuple[int, str]]]:
    """uint8 labels [z, y, x] (LPS cube: +x patient-left, +y posterior, +z superior) and their names."""
    ids = {name: i for name, (i, _) in STRUCTURES.items()}
    voxel_ml = spacing_mm**3 / 1000.0
    body = _body(hu)
    lungs = _lungs(hu, body, voxel_ml)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    mid_x = _mediastinum_x(lungs, body)
    xs = np.arange(hu.shape[2])
    left = lungs & (xs > mid_x)[None, None, :]
    right = lungs & ~left
    for side, mask in (("left", left), ("right", right)):
        if mask.sum() * voxel_ml < MIN_LUNG_ML / 3:
            raise NoLungsError(f"no {side} lung found (air inside the body on that side is below {MIN_LUNG_ML / 3:.0f} ml)")
        zs = np.nonzero(mask)[0]
        split = np.median(zs)
        lower = mask & (np.arange(hu.shape[0]) < split)[:, None, None]  # z grows superior
        labels[mask & ~lower] = ids[f"lung_upper_lobe_{side}"]
        labels[lower] = ids[f"lung_lower_lobe_{side}"]
    spine = _spine(hu, body, lungs, mid_x, spacing_mm)
    labels[spine & (labels == 0)] = ids["spine"]
    heart = _heart(hu, body, lungs, spine)
    labels[heart & (labels == 0)] = ids["heart"]
    return labels, dict(STRUCTURES)


def _body(hu: np.ndarray) -> np.ndarray:
    """The largest tissue component with its holes (lungs, airways) filled per axial slice."""
    tissue = hu > BODY_ABOVE_HU
    lab, n = ndimage.label(tissue)
    if n == 0:
        raise NoLungsError("no body found (nothing above -500 HU)")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def _lungs(hu: np.ndarray, body: np.ndarray, voxel_ml: float) -> np.ndarray:
    air = (hu < LUNG_BELOW_HU) & body
    lab, n = ndimage.label(air)
    if n == 0:
        raise NoLungsError("no air inside the body")
    sizes = np.bincount(lab.ravel()).astype(np.float64)
    sizes[0] = 0
    keep = (sizes >= MIN_LUNG_SHARE * sizes.max()) & (sizes * voxel_ml >= MIN_LUNG_ML)
    if not keep.any():
        raise NoLungsError(f"no air component inside the body reaches {MIN_LUNG_ML:.0f} ml")
    return keep[lab]


def _mediastinum_x(lungs: np.ndarray, body: np.ndarray) -> float:
    """The column between the lungs: the emptiest column of the lung profile near the body's centre."""
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    centre = 0.5 * (cols[0] + cols[-1])
    profile = lungs.sum(axis=(0, 1)).astype(np.float64)
    width = cols[-1] - cols[0]
    lo, hi = int(centre - 0.2 * width), int(centre + 0.2 * width) + 1
    window = profile[max(lo, 0):hi]
    if window.size == 0:
        return float(centre)
    return float(max(lo, 0) + int(np.argmin(window)))


def _spine(hu, body, lungs, mid_x: float, spacing_mm: float) -> np.ndarray:
    xs = np.arange(hu.shape[2])
    near_mid = np.abs(xs - mid_x) * spacing_mm <= SPINE_HALF_WIDTH_MM
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    posterior = np.arange(hu.shape[1]) >= 0.5 * (rows[0] + rows[-1])  # +y posterior
    zs = np.nonzero(lungs.any(axis=(1, 2)))[0]
    in_chest = (np.arange(hu.shape[0]) >= zs[0]) & (np.arange(hu.shape[0]) <= zs[-1])
    bone = (hu > BONE_ABOVE_HU) & body & near_mid[None, None, :] & posterior[None, :, None] & in_chest[:, None, None]
    lab, n = ndimage.label(bone)
    if n == 0:
        return bone
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))  # the column of vertebrae, not a stray rib end


def _heart(hu, body, lungs, spine) -> np.ndarray:
    """Soft tissue between the lungs, in front of the spine, over the lower 60 % of the lungs."""
    zs = np.nonzero(lungs.any(axis=(1, 2)))[0]
    z_top = zs[0] + 0.6 * (zs[-1] - zs[0])
    heart = np.zeros(hu.shape, dtype=bool)
    spine_rows = np.nonzero(spine.any(axis=(0, 2)))[0]
    for k in range(zs[0], int(z_top) + 1):
        lung = lungs[k]
        if not lung.any():
            continue
        # between the lungs: per row, from the first to the last lung voxel
        has = lung.any(axis=1)
        first = np.argmax(lung, axis=1)
        last = lung.shape[1] - 1 - np.argmax(lung[:, ::-1], axis=1)
        cols = np.arange(lung.shape[1])
        between = has[:, None] & (cols[None, :] >= first[:, None]) & (cols[None, :] <= last[:, None])
        front = spine[k].any(axis=1)
        limit = np.nonzero(front)[0][0] if front.any() else (spine_rows[0] if spine_rows.size else lung.shape[0])
        between[limit:] = False
        heart[k] = between & ~lung & body[k] & (hu[k] > SOFT_HU[0]) & (hu[k] < SOFT_HU[1])
    lab, n = ndimage.label(heart)
    if n == 0:
        return heart
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))
