"""Plausibility measures without ground truth (`axonct.anatomy`) tell a chest from a box, a one-sided
lung and a smear along the rays."""

import numpy as np

from axonct.anatomy import chest_metrics


def _phantom(n=64, box=False, lungs=("left", "right"), smear_y=False):
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float32)
    c = (n - 1) / 2
    hu = np.full((n, n, n), -1000.0, np.float32)
    if box:
        body = (np.abs(x - c) < 0.4 * n) & (np.abs(y - c) < 0.3 * n)
    else:
        body = ((x - c) / (0.4 * n)) ** 2 + ((y - c) / (0.3 * n)) ** 2 < 1
    body &= np.abs(z - c) < 0.45 * n
    hu[body] = 40.0
    rng = np.random.default_rng(0)
    hu[body] += rng.normal(0, 30, body.sum())
    for side in lungs:
        cx = c + (0.18 * n if side == "left" else -0.18 * n)  # +x is the patient's left
        lung = ((x - cx) / (0.13 * n)) ** 2 + ((y - c) / (0.18 * n)) ** 2 + ((z - c) / (0.3 * n)) ** 2 < 1
        hu[lung] = -850.0
    if smear_y:
        inside = body.any(axis=1, keepdims=True)
        mean = np.where(body, hu, 0).sum(1, keepdims=True) / np.maximum(body.sum(1, keepdims=True), 1)
        hu = np.where(body, np.broadcast_to(mean, hu.shape), hu) * inside + hu * ~inside
    return hu


def test_two_lungs_in_an_elliptic_body_look_like_a_chest():
    m = chest_metrics(_phantom(), 5.0)
    assert 0.08 < m["enclosed_air_fraction"] < 0.4
    assert m["air_in_both_halves"] and 0.4 < m["air_left_share"] < 0.6
    assert 0.7 < m["body_box_fill"] < 0.85  # an ellipse fills pi/4 of its box
    assert 0.7 < m["ray_streak_ratio"]["frontal"] < 1.4


def test_a_box_body_and_a_one_sided_lung_are_flagged():
    m = chest_metrics(_phantom(box=True, lungs=("right",)), 5.0)
    assert m["body_box_fill"] > 0.95
    assert not m["air_in_both_halves"] and m["air_left_share"] < 0.2


def test_no_air_means_no_share_and_a_smear_along_the_frontal_rays_is_measured():
    m = chest_metrics(_phantom(lungs=()), 5.0)
    assert m["enclosed_air_fraction"] == 0 and m["air_left_share"] is None and not m["air_in_both_halves"]
    smeared = chest_metrics(_phantom(smear_y=True), 5.0)
    assert smeared["ray_streak_ratio"]["frontal"] < 0.3 < chest_metrics(_phantom(), 5.0)["ray_streak_ratio"]["frontal"]
    assert smeared["ray_streak_ratio"]["lateral"] > 1.0
