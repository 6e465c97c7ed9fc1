"""The chest plausibility measures (`axonct.anatomy`) pass every real chest CT, brought onto the cpu
model grid as the product does, and fail the same CT with one lateral chest wall cut open.

Uses ../shared/data (evaluation and training CTs; skips when absent) and the sample CT (LIDC-IDRI-0001;
skips when not extracted). `scripts/calibrate_anatomy.py` prints the same measures as a table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from axonct.anatomy import body_and_air, chest_metrics, plausibility_warnings

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
HAVE_DATA = (DATA / "manifest.csv").is_file()
CTS = sorted((DATA / "ct").glob("*/*.nii.gz")) if HAVE_DATA else []
SAMPLE = "sample:LIDC-IDRI-0001"


@pytest.fixture(scope="module")
def volumes():
    """HU volumes on the cpu grid, cached per CT for the module."""
    return {}


def _hu(name, real_ct_path_factory, cache):
    if name not in cache:
        from axonct.config import data_preset
        from axonct.io.ct import read_ct
        from axonct.io.ct_preprocess import ct_to_model, unit_to_hu

        path = real_ct_path_factory() if name == SAMPLE else DATA / "ct" / name
        grid = data_preset("cpu").grid
        mv = ct_to_model(read_ct(path), grid)
        cache[name] = (unit_to_hu(mv.array, grid), grid.spacing_mm)
    return cache[name]


def _names():
    names = [f"{p.parent.name}/{p.name}" for p in CTS]
    if not HAVE_DATA:
        skip = pytest.mark.skip(reason="real data (../shared/data) not present")
        names.append(pytest.param("shared-data", marks=skip))
    return names + [SAMPLE]


def _open_left_wall(hu: np.ndarray) -> np.ndarray:
    """The CT with its left lateral chest wall removed beside the middle half of the left lung's rows in
    the middle third of its axial slices: there the lung opens to the air outside the body."""
    body, air = body_and_air(hu)
    mid = float(np.nonzero(body)[2].mean())
    left = air.copy()
    left[:, :, : int(np.ceil(mid))] = False  # +x is the patient's left
    out = hu.copy()
    zs = np.nonzero(left.any(axis=(1, 2)))[0]
    third = len(zs) // 3
    for z in zs[third:2 * third]:
        ys, xs = np.nonzero(left[z])
        y0, y1 = np.percentile(ys, [25, 75]).astype(int)
        out[z, y0:y1 + 1, int(np.median(xs)):] = -1000.0
    return out


@pytest.fixture
def sample_factory(request):
    return lambda: request.getfixturevalue("real_ct_path")


@pytest.mark.parametrize("name", _names())
def test_a_real_chest_ct_is_plausible_and_fails_with_an_open_chest_wall(name, volumes, sample_factory):
    hu, spacing = _hu(name, sample_factory, volumes)
    m = chest_metrics(hu, spacing)
    assert m["plausible"], (name, m["plausibility_failures"], m)
    assert plausibility_warnings(m) == []
    opened = chest_metrics(_open_left_wall(hu), spacing)
    assert not opened["chest_wall_closed"] and "chest wall open" in opened["plausibility_failures"], (name, opened)
    assert opened["enclosed_air_ml"] < m["enclosed_air_ml"]
    assert any("chest wall is open" in w for w in plausibility_warnings(opened))
