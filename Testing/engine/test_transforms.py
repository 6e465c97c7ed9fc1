"""The preprocessing layer (axonct.transforms): the model view of a radiograph, and one percentile
normalisation whose numpy (normalize_view) and torch (robust_unit) forms agree, flat images included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from axonct.io.radiograph import read_radiograph
from axonct.transforms.grey_values import equalize_view, equalize_views
from axonct.transforms.normalize import normalize_view, robust_unit
from axonct.transforms.window import frame_window, to_model_view, window_image

RG1 = get_testdata_file("RG1_UNCR.dcm")


def test_to_model_view_shape_range_and_padding_keeps_aspect():
    rg = read_radiograph(RG1)
    v = to_model_view(rg, 64)
    assert v.shape == (64, 64) and v.dtype == np.float32
    assert v.min() == 0.0 and v.max() == 1.0

    img = np.zeros((60, 120), np.float32)
    img[20:40, 50:70] = 1.0  # a 20 x 20 bright square in a 2:1 image
    for crop in ("pad", "center"):
        out = to_model_view(img, 48, crop=crop, percentiles=(0, 100))
        rows, cols = np.nonzero(out > 0.5)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert abs(height - width) <= 1, crop
    pad = to_model_view(img, 48, crop="pad", percentiles=(0, 100))
    rows, cols = np.nonzero(pad > 0.5)
    assert abs((np.ptp(rows) + 1) - 8) <= 1  # 20 px of a 120 px side -> 8 px of 48
    assert pad[0, 0] == 0.0 and pad[-1, -1] == 0.0  # padding is the background level


def test_a_window_outside_the_image_is_background_and_reports_its_coverage():
    img = np.zeros((100, 100), np.float32)
    img[40:60, 40:60] = 1.0
    view, covered = frame_window(img, (0.0, 0.0), 1.0, 50)  # centred on the corner: a quarter inside
    assert view.shape == (50, 50) and covered == pytest.approx(0.25, abs=0.03)
    assert view[:20, :20].max() == 0.0  # outside the image: the background level, normalised to 0
    geometry, inside = window_image(img, (50.0, 50.0), 2.0, 50)
    assert inside.min() == 1.0 and geometry.shape == (50, 50)
    assert geometry[25, 25] == pytest.approx(1.0) and geometry[0, 0] == 0.0


def test_normalize_view_uses_percentiles_and_clips():
    rng = np.random.default_rng(1)
    img = rng.random((100, 100))
    img[0, 0], img[0, 1] = 50.0, -50.0  # outliers must not decide the contrast
    out = normalize_view(img, (1, 99))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < float(np.median(out)) < 0.6
    assert (out == 1.0).mean() < 0.02


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    ordinary = rng.random((40, 40))
    ordinary[0, :3] = (30.0, -30.0, 9.0)
    mostly_flat = np.zeros((40, 40))  # 3 of 1600 pixels (< 0.5 %) differ: both percentiles are 0
    mostly_flat[5, 5], mostly_flat[6, 6], mostly_flat[7, 7] = 2.0, 1.0, 4.0
    return {"ordinary": ordinary, "mostly flat": mostly_flat, "constant": np.full((40, 40), 7.5),
            "zero": np.zeros((40, 40)), "tiny range": ordinary * 1e-9}


@pytest.mark.parametrize("name", list(_images()))
def test_numpy_and_torch_normalisations_agree_flat_images_included(name):
    img = _images()[name]
    expect = normalize_view(img)
    batch = torch.from_numpy(np.stack([img, _images()["ordinary"]]))[:, None]  # per sample, not per batch
    got = robust_unit(batch)[0, 0].numpy()
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(expect))
    np.testing.assert_allclose(got, expect, atol=1e-6)


def test_the_flat_image_rule():
    """Constant -> zeros (no NaN); a few bright pixels on a flat background stay graded (the full
    range), not a binary mask; and the result does not depend on the image's units."""
    imgs = _images()
    assert not normalize_view(imgs["constant"]).any() and not normalize_view(imgs["zero"]).any()
    flat = normalize_view(imgs["mostly flat"])
    assert flat[5, 5] == pytest.approx(0.5) and flat[6, 6] == pytest.approx(0.25) and flat[7, 7] == 1.0
    np.testing.assert_allclose(normalize_view(imgs["tiny range"]), normalize_view(imgs["ordinary"]), atol=1e-6)
    t = torch.from_numpy(imgs["ordinary"])[None, None]
    torch.testing.assert_close(robust_unit(t * 1e-9), robust_unit(t), atol=1e-6, rtol=0)


def test_equalize_view_is_the_batched_rank_for_one_image():
    img = np.random.default_rng(4).random((30, 30)).astype(np.float32)
    img[0, :4] = 0.5  # ties share their mid-rank
    out = equalize_view(img)
    assert np.array_equal(out, equalize_views(torch.from_numpy(img)[None])[0].numpy())
    assert len(set(out[0, :4].tolist())) == 1
    assert np.array_equal(np.argsort(out.ravel(), kind="stable")[-5:], np.argsort(img.ravel(), kind="stable")[-5:])
