"""A PNG contact sheet of cache or synthetic cases (`axon synth --gallery`).

A tool for looking at training data, not part of making it: it reads a cache the way training does
(`CTCache`) or takes generated chests directly, and draws each as mid slices and its two DRRs.
"""

from __future__ import annotations

from pathlib import Path

from axonct.data.datasets import CTCache
from axonct.errors import AxonInputError
from axonct.io.ct_preprocess import hu_to_unit
from axonct.io.montage import orthogonal_slices, save_montage, to_uint8

GALLERY_WINDOW_HU = (-1000.0, 300.0)
"""Lungs, soft tissue and bone all distinguishable in one window."""


def save_gallery(cases, path: str | Path, n: int = 6, tile: int = 160) -> Path:
    """PNG with one row per case: axial, coronal, sagittal mid slices, frontal and lateral DRRs.

    ``cases``: a cache folder, a CTCache, or a sequence of SyntheticChest.
    """
    items = []
    if isinstance(cases, (str, Path, CTCache)):
        cache = cases if isinstance(cases, CTCache) else CTCache(cases)
        grid = cache.config.grid
        for c in cache.all_ids[:n]:
            ct, drr = cache.load(c)
            items.append((c, ct, drr))
    else:
        for i, ch in enumerate(list(cases)[:n]):
            grid = ch.config.grid
            items.append((f"case {i}", ch.unit, ch.render_drr()))
    if not items:
        raise AxonInputError(str(cases) if isinstance(cases, (str, Path)) else None, "has no cases for a gallery")
    lo, hi = (float(hu_to_unit(v, grid)) for v in GALLERY_WINDOW_HU)
    rows = []
    for name, ct, drr in items:
        sl = orthogonal_slices(ct)
        row = [(f"{name} axial", to_uint8(sl["axial"], lo, hi)), ("coronal", to_uint8(sl["coronal"], lo, hi)),
               ("sagittal", to_uint8(sl["sagittal"], lo, hi))]
        row += [(v, to_uint8(drr[k], 0.0, None)) for k, v in enumerate(("frontal DRR", "lateral DRR")[: len(drr)])]
        rows.append(row)
    return save_montage(rows, path, tile=tile)
