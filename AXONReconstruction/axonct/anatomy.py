"""Is it a chest? Plausibility measures of a reconstructed volume that need no ground truth.

A reconstruction can agree with its radiograph (reprojection correlates well) and still be a box of
soft tissue with one small lung, a lung whose chest wall is open to the outside, or a smear along
the rays. These numbers catch that on real radiographs, where no CT exists to compare with. A real
chest always has a closed wall, so lung air is counted only where the body encloses it:

* enclosed air: air (below -400 HU) in the holes of the body's outline, filled per axial slice, as
  a share of the body, in mL, and the share on the patient's left;
* open-wall air: air that has tissue on both sides along its row or column in an axial slice but is
  not enclosed (a lung open to the outside), as a share of open plus enclosed air;
* body box fill: per axial slice, the body's area over its bounding box's, averaged (an ellipse
  gives 0.79; a rectangle whose sides follow the grid's edges gives 1.0);
* ray streaks: mean absolute gradient along a view's rays over the mean across them inside the
  body (about 1 for anatomy; a back-projection smear along the rays drives it towards 0).

The ranges that judge them (``plausibility_failures``, ``plausibility_warnings``) were calibrated on
real chest CTs brought onto the cpu model grid (128^3, 2.5 mm; scripts/calibrate_anatomy.py): all
pass with a margin (enclosed air 19-32 %, left share 0.45-0.58, open-wall air <= 1.3 %, box fill
0.82-0.92), while a lung open on one side, one lung only or a grid-shaped body fail.

Volumes are [z, y, x] arrays on an LPS grid (z head->feet or feet->head does not matter here;
+x is the patient's left, y is antero-posterior: the frontal rays run along y, the lateral along x).
"""

from __future__ import annotations

import numpy as np

AIR_HU = -400.0
BODY_HU = -500.0
ENCLOSED_AIR_RANGE = (0.12, 0.40)
"""Plausible enclosed air fraction (real chest CTs: 0.19-0.32)."""
LEFT_SHARE_RANGE = (0.35, 0.65)
"""Plausible share of the enclosed air on the patient's left (real chest CTs: 0.45-0.58); inside it,
the air is in both halves."""
MAX_OPEN_WALL_AIR = 0.05
"""Largest plausible open-wall air fraction (real chest CTs: at most 0.013, air in the concavities of
the neck and back)."""
MAX_BODY_BOX_FILL = 0.96
"""Largest plausible body box fill (real chest CTs: 0.82-0.92, bodies wider than the grid included)."""


def body_and_air(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The body (largest component above BODY_HU, holes filled per axial slice) and the air it encloses
    (below AIR_HU, in those holes). A lung whose chest wall is open to the outside is not enclosed."""
    _, body, air, _ = _masks(hu)
    return body, air


def _masks(hu: np.ndarray):
    """tissue, body (tissue with its holes filled per axial slice), enclosed air and open-wall air."""
    from scipy import ndimage

    hu = np.asarray(hu, np.float32)
    dense = hu > BODY_HU
    lab, n = ndimage.label(dense)
    if n == 0:
        empty = np.zeros_like(dense)
        return empty, empty, empty, empty
    sizes = ndimage.sum(dense, lab, index=np.arange(1, n + 1))
    tissue = lab == (int(np.argmax(sizes)) + 1)
    body = np.stack([ndimage.binary_fill_holes(s) for s in tissue])
    low = hu < AIR_HU
    air = ndimage.binary_opening(body & ~tissue & low, iterations=1)  # single-voxel noise is not a lung
    between = _between(tissue, 1) | _between(tissue, 2)  # the wall, closed or not, on both sides
    open_air = ndimage.binary_opening(between & low, iterations=1) & ~air
    return tissue, body, air, open_air


def _between(mask: np.ndarray, axis: int) -> np.ndarray:
    """True where ``mask`` holds somewhere before and somewhere after along ``axis``."""
    before = np.maximum.accumulate(mask, axis=axis)
    after = np.flip(np.maximum.accumulate(np.flip(mask, axis), axis=axis), axis)
    return before & after & ~mask


def chest_metrics(hu: np.ndarray, spacing_mm: float) -> dict:
    """Enclosed and open-wall air, left share, body box fill, ray streak ratios and the verdict
    (``plausible``, ``plausibility_failures``) of one volume in HU."""
    hu = np.asarray(hu, np.float32)
    _, body, air, open_air = _masks(hu)
    voxel_ml = float(spacing_mm) ** 3 / 1000.0
    n_air, n_open = float(air.sum()), float(open_air.sum())
    out: dict = {"body_ml": round(float(body.sum()) * voxel_ml, 1),
                 "enclosed_air_ml": round(n_air * voxel_ml, 1)}
    out["enclosed_air_fraction"] = round(n_air / max(float(body.sum()), 1.0), 4)
    if air.any():
        xs = np.nonzero(body)[2]
        mid = float(xs.mean()) if xs.size else hu.shape[2] / 2
        ax = np.nonzero(air)[2]
        out["air_left_share"] = round(float((ax > mid).mean()), 4)  # +x is the patient's left
    else:
        out["air_left_share"] = None
    lo, hi = LEFT_SHARE_RANGE
    out["air_in_both_halves"] = bool(out["air_left_share"] is not None and lo <= out["air_left_share"] <= hi)
    out["open_wall_air_ml"] = round(n_open * voxel_ml, 1)
    out["open_wall_air_fraction"] = round(n_open / (n_open + n_air), 4) if n_open + n_air > 0 else 0.0
    out["chest_wall_closed"] = bool(out["open_wall_air_fraction"] < MAX_OPEN_WALL_AIR)
    out["body_box_fill"] = _box_fill(body)
    out["ray_streak_ratio"] = _streaks(hu, body)
    out["plausibility_failures"] = plausibility_failures(out)
    out["plausible"] = not out["plausibility_failures"]
    return out


def plausibility_failures(metrics: dict) -> list[str]:
    """Short names of the checks ``metrics`` (from ``chest_metrics``) fails; empty for a plausible chest."""
    failures = []
    if not metrics["chest_wall_closed"]:
        failures.append("chest wall open")
    if not metrics["air_in_both_halves"]:
        failures.append("air not in both halves")
    lo, hi = ENCLOSED_AIR_RANGE
    if not lo <= metrics["enclosed_air_fraction"] <= hi:
        failures.append("enclosed air " + ("too little" if metrics["enclosed_air_fraction"] < lo else "too much"))
    if metrics["body_box_fill"] is not None and metrics["body_box_fill"] > MAX_BODY_BOX_FILL:
        failures.append("body box-shaped")
    return failures


def plausibility_warnings(metrics: dict) -> list[str]:
    """One readable warning per check that ``metrics`` (from ``chest_metrics``) fails."""
    failures = metrics.get("plausibility_failures")
    if failures is None:
        failures = plausibility_failures(metrics)
    out = []
    if "chest wall open" in failures:
        out.append(f"the reconstruction's chest wall is open: {100 * metrics['open_wall_air_fraction']:.0f} % of its "
                   "lung air touches the outside of the body in axial slices (plausible: below "
                   f"{100 * MAX_OPEN_WALL_AIR:.0f} %)")
    if "air not in both halves" in failures:
        share = metrics["air_left_share"]
        lo, hi = LEFT_SHARE_RANGE
        where = ("the body encloses no lung air" if share is None
                 else f"{100 * share:.0f} % of it lies on the patient's left")
        out.append(f"the reconstruction's lung air is not in both halves of the body: {where} "
                   f"(plausible: {100 * lo:.0f}-{100 * hi:.0f} % on the left)")
    if any(f.startswith("enclosed air") for f in failures):
        lo, hi = ENCLOSED_AIR_RANGE
        amount = "little" if metrics["enclosed_air_fraction"] < lo else "much"
        out.append(f"the reconstruction holds too {amount} enclosed lung air "
                   f"({100 * metrics['enclosed_air_fraction']:.0f} % of the body; plausible: "
                   f"{100 * lo:.0f}-{100 * hi:.0f} %)")
    if "body box-shaped" in failures:
        out.append("the reconstruction's body is box-shaped: its axial slices fill "
                   f"{100 * metrics['body_box_fill']:.0f} % "
                   f"of their bounding boxes (plausible: at most {100 * MAX_BODY_BOX_FILL:.0f} %; a real chest is "
                   "rounded, not cut straight by the grid)")
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
