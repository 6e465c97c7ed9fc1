"""Is it a chest? Plausibility measures of a reconstructed volume that need no ground truth.

A reconstruction can agree with its radiograph (reprojection correlates well) and still be a box of
soft tissue with one small lung, or smear the image along the rays. These numbers catch that on
real radiographs, where no CT exists to compare with:

* enclosed air: air (below -400 HU) inside the body outline, as a share of the body (real chest CTs
  measure about 18-25 %), in mL, and the share on the patient's left (about 0.45 in real chests);
* body box fill: per axial slice, the body's area over its bounding box's, averaged (an ellipse
  gives 0.79; a rectangle whose sides follow the detector edges gives 1.0);
* ray streaks: mean absolute gradient along a view's rays over the mean across them inside the
  body (about 1 for anatomy; a back-projection smear along the rays drives it towards 0).

Volumes are [z, y, x] arrays on an LPS grid (z head->feet or feet->head does not matter here;
+x is the patient's left, y is antero-posterior: the frontal rays run along y, the lateral along x).
"""

from __future__ import annotations

import numpy as np

AIR_HU = -400.0
BODY_HU = -500.0
TYPICAL_ENCLOSED_AIR = (0.18, 0.25)


def body_and_air(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The body (largest component above BODY_HU) and the air it encloses.

    Per axial slice, a voxel is inside the body when body tissue lies on both sides of it along its
    row or along its column. Unlike filling holes, this still counts a lung whose chest wall the
    reconstruction left open on one side (a common failure at the field's edges), and it never
    counts the air around a convex body."""
    from scipy import ndimage

    dense = hu > BODY_HU
    lab, n = ndimage.label(dense)
    if n == 0:
        return np.zeros_like(dense), np.zeros_like(dense)
    sizes = ndimage.sum(dense, lab, index=np.arange(1, n + 1))
    tissue = lab == (int(np.argmax(sizes)) + 1)
    inside = _between(tissue, 1) | _between(tissue, 2)
    body = tissue | inside
    air = inside & (hu < AIR_HU)
    air = ndimage.binary_opening(air, iterations=1)  # single-voxel noise is not a lung
    return body, air


def _between(mask: np.ndarray, axis: int) -> np.ndarray:
    """True where ``mask`` holds somewhere before and somewhere after along ``axis``."""
    before = np.maximum.accumulate(mask, axis=axis)
    after = np.flip(np.maximum.accumulate(np.flip(mask, axis), axis=axis), axis)
    return before & after & ~mask


def chest_metrics(hu: np.ndarray, spacing_mm: float) -> dict:
    """Enclosed air, left share, body box fill and ray streak ratios of one volume in HU."""
    hu = np.asarray(hu, np.float32)
    body, air = body_and_air(hu)
    voxel_ml = float(spacing_mm) ** 3 / 1000.0
    out: dict = {"body_ml": round(float(body.sum()) * voxel_ml, 1),
                 "enclosed_air_ml": round(float(air.sum()) * voxel_ml, 1)}
    out["enclosed_air_fraction"] = round(float(air.sum()) / max(float(body.sum()), 1.0), 4)
    if air.any():
        xs = np.nonzero(body)[2]
        mid = float(xs.mean()) if xs.size else hu.shape[2] / 2
        ax = np.nonzero(air)[2]
        out["air_left_share"] = round(float((ax > mid).mean()), 4)  # +x is the patient's left
    else:
        out["air_left_share"] = None
    out["air_in_both_halves"] = bool(out["air_left_share"] is not None and 0.2 <= out["air_left_share"] <= 0.8)
    out["body_box_fill"] = _box_fill(body)
    out["ray_streak_ratio"] = _streaks(hu, body)
    return out


def _box_fill(body: np.ndarray) -> float | None:
    fills = []
    min_area = 0.02 * body.shape[1] * body.shape[2]
    for s in body:
        area = float(s.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(s)
        fills.append(area / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
    return round(float(np.mean(fills)), 4) if fills else None


def _streaks(hu: np.ndarray, body: np.ndarray) -> dict:
    from scipy import ndimage

    inner = ndimage.binary_erosion(body, iterations=2)
    if inner.sum() < 64:
        return {"frontal": None, "lateral": None}
    clipped = np.clip(hu, -1000.0, 1000.0)
    gz, gy, gx = (np.abs(np.diff(clipped, axis=a, append=np.take(clipped, [-1], axis=a))) for a in (0, 1, 2))
    gy, gx, gz = gy[inner].mean(), gx[inner].mean(), gz[inner].mean()
    return {"frontal": round(float(gy / max((gx + gz) / 2, 1e-6)), 4),
            "lateral": round(float(gx / max((gy + gz) / 2, 1e-6)), 4)}
