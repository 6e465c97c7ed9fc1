"""Where the source chest's organs and rib cage are: the anchors of every deformation.

Why separate: the deformation bumps are placed on measured structures (lung and heart centres and
spreads, dome apices, the spine's span, the rib cage's outline per height); measuring them once from
the source label map keeps the per-case work to evaluating smooth fields.

Frames: millimetres relative to the working cube's centre, points as (x, y, z) = LPS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from axonct.config import VolumeGrid
from axonct.errors import AxonInputError
from axonct.data.synthetic_chest.source import HEART, LUNG_LEFT, LUNG_RIGHT


def structure_points(lab: np.ndarray, names_or_ids, structures: dict, work_grid: VolumeGrid,
                     where: Path | None) -> np.ndarray:
    """(x, y, z) mm of every voxel of the named structures (or label ids); ``where`` names the
    input blamed when there are (almost) none."""
    ids = [structures[n][0] if isinstance(n, str) else int(n) for n in names_or_ids]
    idx = np.argwhere(np.isin(lab, ids))
    if idx.shape[0] < 10:
        raise AxonInputError(where, f"has (almost) no voxels of {', '.join(map(str, names_or_ids))} "
                                    "inside the model cube")
    s = work_grid.spacing_mm
    return (idx[:, ::-1] - (work_grid.size - 1) / 2.0) * s  # (x, y, z)


def anatomy_landmarks(lab: np.ndarray, structures: dict, spine_ids: list[int], work_grid: VolumeGrid,
                      where: Path | None) -> dict:
    """Centres and extents that place the deformation bumps on the structures they move."""

    def points(names_or_ids):
        return structure_points(lab, names_or_ids, structures, work_grid, where)

    lm = {}
    for key, names in (("lung_left", LUNG_LEFT), ("lung_right", LUNG_RIGHT), ("heart", HEART),
                       ("lower_left", ("lung_lower_lobe_left",)), ("lower_right", ("lung_lower_lobe_right",))):
        p = points(names)
        lm[key] = (p.mean(0), p.std(0))
    lungs = points(LUNG_LEFT + LUNG_RIGHT)
    lm["thorax"] = (lungs.mean(0), lungs.std(0))
    lm["lung_z"] = (float(lungs[:, 2].min()), float(lungs[:, 2].max()))
    for side in ("left", "right"):
        p = points((f"lung_lower_lobe_{side}",))
        c, sd = p.mean(0), p.std(0)
        central = p[np.abs(p[:, 0] - c[0]) < sd[0]]  # dome apex: the base under the lobe's middle
        lm[f"dome_{side}"] = np.array([c[0], c[1], float(np.percentile(central[:, 2], 8))])
    spine = points(spine_ids) if spine_ids else lungs
    lm["spine"] = (spine.mean(0), (float(spine[:, 2].min()), float(spine[:, 2].max())))
    return lm


def _cage_rows(cage: np.ndarray, coords: np.ndarray, landmarks: dict) -> np.ndarray:
    """(z, x0, x1, y0, y1) of the cage's extent on each axial slice over the lungs' height (mm);
    without at least three such slices, the thorax's centre +- two spreads at both lung ends."""
    z0, z1 = landmarks["lung_z"]
    rows = []
    for k in np.nonzero((coords >= z0) & (coords <= z1))[0]:
        xs = np.nonzero(cage[k].any(axis=0))[0]
        ys = np.nonzero(cage[k].any(axis=1))[0]
        if xs.size >= 2 and ys.size >= 2:
            rows.append((coords[k], coords[xs[0]], coords[xs[-1]], coords[ys[0]], coords[ys[-1]]))
    if len(rows) < 3:
        c, sd = landmarks["thorax"]
        rows = [(z, c[0] - 2 * sd[0], c[0] + 2 * sd[0], c[1] - 2 * sd[1], c[1] + 2 * sd[1]) for z in (z0, z1)]
    return np.asarray(rows, dtype=np.float64)


def cage_profile(lab: np.ndarray, landmarks: dict, rib_ids: list[int], lung_ids, work_grid: VolumeGrid) -> dict:
    """The rib cage's outer extent per height (mm): centre and half-widths in x and y.

    Measured on the ribs (or, without rib labels, the lungs plus 15 mm) over the lungs' height,
    held constant above and below it, kept at least 85 % of its widest (the narrow upper ring
    would count the shoulders as fat) and smoothed over ~4 cm; the fat shell is what lies outside.
    """
    n, s = work_grid.size, work_grid.spacing_mm
    coords = (np.arange(n) - (n - 1) / 2.0) * s
    ids = rib_ids or list(lung_ids[0] + lung_ids[1])
    margin = 0.0 if rib_ids else 15.0
    r = _cage_rows(np.isin(lab, ids), coords, landmarks)
    zq = coords
    prof = np.stack([np.interp(zq, r[:, 0], r[:, j]) for j in range(1, 5)])  # constant beyond the ends
    taps = np.arange(-int(60.0 // s), int(60.0 // s) + 1) * s
    k = np.exp(-0.5 * (taps / 20.0) ** 2)
    k /= k.sum()
    pad = len(k) // 2
    prof = np.stack([np.convolve(np.pad(p, pad, mode="edge"), k, mode="valid") for p in prof])
    x0, x1, y0, y1 = prof
    rx, ry = (x1 - x0) / 2 + margin, (y1 - y0) / 2 + margin
    return {"z": zq, "cx": (x0 + x1) / 2, "cy": (y0 + y1) / 2,
            "rx": np.maximum(rx, 0.85 * rx.max()), "ry": np.maximum(ry, 0.85 * ry.max())}
