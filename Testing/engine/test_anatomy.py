"""Plausibility measures without ground truth (`axonct.anatomy`) tell a chest from a box, a one-sided
lung, a lung whose chest wall is open and a smear along the rays."""

import numpy as np

from axonct.anatomy import (MAX_BODY_BOX_FILL, MAX_OPEN_WALL_AIR, body_and_air, chest_metrics,
                            plausibility_warnings)


def _phantom(n=64, box=False, lungs=("left", "right"), smear_y=False, open_wall=(), grid_box=False):
    """Elliptic body (or a box; ``grid_box``: a box whose left and right sides are the grid's edges)
    with air lungs; ``open_wall``: the sides whose lateral chest wall is removed, so that lung's air
    runs out to the air outside the body (or to the grid's edge)."""
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float32)
    c = (n - 1) / 2
    hu = np.full((n, n, n), -1000.0, np.float32)
    if grid_box:
        body = np.abs(y - c) < 0.3 * n
    elif box:
        body = (np.abs(x - c) < 0.4 * n) & (np.abs(y - c) < 0.3 * n)
    else:
        body = ((x - c) / (0.4 * n)) ** 2 + ((y - c) / (0.3 * n)) ** 2 < 1
    body &= np.abs(z - c) < 0.45 * n
    hu[body] = 40.0
    rng = np.random.default_rng(0)
    hu[body] += rng.normal(0, 30, body.sum())
    for side in lungs:
        sign = 1 if side == "left" else -1  # +x is the patient's left
        cx = c + sign * 0.18 * n
        yz = ((y - c) / (0.18 * n)) ** 2 + ((z - c) / (0.3 * n)) ** 2
        lung = ((x - cx) / (0.13 * n)) ** 2 + yz < 1
        if side in open_wall:
            lung |= (yz < 1) & (sign * (x - cx) >= 0)
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
    assert m["chest_wall_closed"] and m["open_wall_air_fraction"] < MAX_OPEN_WALL_AIR
    assert m["plausible"] and m["plausibility_failures"] == [] and plausibility_warnings(m) == []


def test_a_lung_whose_lateral_chest_wall_is_open_is_not_enclosed():
    """Tissue lies above and below the open lung along its columns, so counting air between tissue
    would still call it lung; the body's outline does not enclose it."""
    closed = chest_metrics(_phantom(), 5.0)
    m = chest_metrics(_phantom(open_wall=("left",)), 5.0)
    assert not m["chest_wall_closed"] and m["open_wall_air_fraction"] > 0.4
    assert m["enclosed_air_ml"] < 0.6 * closed["enclosed_air_ml"]
    assert not m["air_in_both_halves"] and m["air_left_share"] < 0.1  # only the closed right lung counts
    assert not m["plausible"] and "chest wall open" in m["plausibility_failures"]
    warnings = plausibility_warnings(m)
    assert any("chest wall is open" in w and f"{100 * m['open_wall_air_fraction']:.0f} %" in w for w in warnings)
    _, air = body_and_air(_phantom(open_wall=("left",)))
    assert not air[:, :, 40:].any()  # no air enclosed on the open (left) side


def test_a_box_body_whose_sides_are_the_grid_edges_is_flagged():
    m = chest_metrics(_phantom(grid_box=True), 5.0)
    assert m["body_box_fill"] > MAX_BODY_BOX_FILL and m["chest_wall_closed"] and m["air_in_both_halves"]
    assert "body box-shaped" in m["plausibility_failures"] and "chest wall open" not in m["plausibility_failures"]
    assert any("box-shaped" in w for w in plausibility_warnings(m))
    # lungs running out to the grid's edges: their wall is the edge of the grid, not tissue
    cut = chest_metrics(_phantom(grid_box=True, open_wall=("left", "right")), 5.0)
    assert not cut["chest_wall_closed"] and cut["open_wall_air_fraction"] > 0.9
    assert cut["enclosed_air_fraction"] < 0.01 and "chest wall open" in cut["plausibility_failures"]


def test_a_box_body_and_a_one_sided_lung_are_flagged():
    m = chest_metrics(_phantom(box=True, lungs=("right",)), 5.0)
    assert m["body_box_fill"] > 0.95
    assert not m["air_in_both_halves"] and m["air_left_share"] < 0.2
    assert {"body box-shaped", "air not in both halves"} <= set(m["plausibility_failures"])


def test_one_lung_only_fails_the_halves_check():
    m = chest_metrics(_phantom(lungs=("right",)), 5.0)
    assert m["chest_wall_closed"] and m["body_box_fill"] < MAX_BODY_BOX_FILL
    assert not m["air_in_both_halves"] and not m["plausible"]
    assert "air not in both halves" in m["plausibility_failures"]
    assert any("not in both halves" in w and "0 % of it lies on the patient's left" in w
               for w in plausibility_warnings(m))


def test_no_air_means_no_share_and_a_smear_along_the_frontal_rays_is_measured():
    m = chest_metrics(_phantom(lungs=()), 5.0)
    assert m["enclosed_air_fraction"] == 0 and m["air_left_share"] is None and not m["air_in_both_halves"]
    assert m["open_wall_air_fraction"] == 0 and m["chest_wall_closed"]
    assert set(m["plausibility_failures"]) == {"air not in both halves", "enclosed air too little"}
    assert len(plausibility_warnings(m)) == 2
    smeared = chest_metrics(_phantom(smear_y=True), 5.0)
    assert smeared["ray_streak_ratio"]["frontal"] < 0.3 < chest_metrics(_phantom(), 5.0)["ray_streak_ratio"]["frontal"]
    assert smeared["ray_streak_ratio"]["lateral"] > 1.0
