"""Every random choice of one synthetic chest, drawn in a fixed order from ``default_rng(seed)``.

Why separate: the draw order is the seed's contract (a cache's cases are reproducible from their
seeds, and forcing a feature on or off must not shift any other draw), so it lives in one place,
grouped by what the draws describe, each group drawn in the order the generator always used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from axonct.data.synthetic_anatomy import AnatomyConfig


class _Draws:
    """The generator's three kinds of draw, all from one ``numpy`` generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def u(self, lo, hi) -> float:
        return float(self.rng.uniform(lo, hi))

    def sym(self, m) -> float:
        return float(self.rng.uniform(-m, m))

    def unit(self) -> float:
        return float(self.rng.uniform())


def _pose_and_habitus(d: _Draws, a: "AnatomyConfig") -> dict:
    """Rotation, shift, body size and proportions, chest shape, fat shell and the child switch."""
    rotation = [d.sym(m) for m in a.max_rotation_deg]
    shift = [d.sym(m) for m in a.max_shift_mm]
    size = d.u(*a.body_size)
    prop = [d.u(*a.scale_lr), d.u(*a.scale_ap), d.u(*a.scale_height)]
    chest_shape, fat_shell = d.u(*a.chest_shape), d.u(*a.fat_shell)
    child_draw, child_degree = d.unit(), d.u(*a.child_degree)
    child = child_draw < a.child_probability
    t = child_degree if child else 0.0
    size *= 1.0 - a.child_size * t
    scale = [size * prop[0], size * prop[1], size * prop[2] * (1.0 - a.child_height * t)]
    return {"rotation": rotation, "shift": shift, "size": size, "scale": scale, "child": child, "t": t,
            "girth": size * (prop[0] + prop[1]) / 2,  # sizes of the added structures follow the body
            "chest_shape": chest_shape, "fat_shell": fat_shell}


def _heart_spine_ribs(d: _Draws, a: "AnatomyConfig", t: float, breath: float) -> dict:
    """Heart size and shift, spine bends (scoliosis replacing the mild lateral bend) and rib cage."""
    heart = d.u(*a.heart_scale) + a.child_heart_scale * t
    heart_shift = [d.sym(m) for m in a.heart_shift_mm]
    lat_c, lat_s, spine_ap = d.sym(a.spine_lateral_mm), d.sym(a.spine_lateral_mm / 2), d.sym(a.spine_ap_mm)
    scol_draw, scol_mm = d.unit(), d.u(*a.scoliosis_mm)
    scol_side, scol_s = (1.0 if d.rng.uniform() < 0.5 else -1.0), d.sym(0.5)
    scoliosis = scol_draw < a.scoliosis_probability
    if scoliosis:
        lat_c, lat_s = scol_side * scol_mm, scol_s * scol_mm
    rib_spacing, rib_angle = d.sym(a.rib_spacing) + a.breath_rib_spacing * breath, d.sym(a.rib_angle)
    return {"heart": {"scale": heart, "shift_mm": heart_shift},
            "spine": {"lateral_c_mm": lat_c, "lateral_s_mm": lat_s, "ap_mm": spine_ap, "scoliosis": bool(scoliosis)},
            "ribs": {"spacing": rib_spacing, "angle": rib_angle}}


def _added_structures(d: _Draws, a: "AnatomyConfig", h: dict) -> dict:
    """Breasts (never in a child case) and arms down beside the chest, sized with the body ``h``."""
    size, girth = h["size"], h["girth"]
    breast_draw = d.unit()
    breasts = {"apply": breast_draw < a.breast_probability and not h["child"],
               "radius_mm": girth * d.u(*a.breast_radius_mm), "depth_mm": girth * d.u(*a.breast_depth_mm),
               "hu": d.u(*a.breast_hu), "droop_mm": size * d.u(*a.breast_droop_mm),
               "spread": d.u(*a.breast_spread)}
    arms_draw = d.unit()
    arms = {"apply": arms_draw < a.arms_probability, "radius_mm": girth * d.u(*a.arm_radius_mm),
            "gap_mm": d.u(*a.arm_gap_mm), "abduction_deg": d.u(*a.arm_abduction_deg),
            "shoulder_mm": size * d.u(*a.arm_shoulder_mm), "y_mm": size * d.u(*a.arm_y_mm),
            "hu": d.u(*a.arm_hu), "humerus_radius_mm": girth * d.u(*a.humerus_radius_mm),
            "humerus_length_mm": h["scale"][2] * d.u(*a.humerus_length_mm),
            "cortex_hu": d.u(*a.humerus_cortex_hu), "marrow_hu": d.u(*a.humerus_marrow_hu)}
    return {"breasts": breasts, "arms": arms}


def _truncation(d: _Draws, a: "AnatomyConfig") -> dict:
    """The scanner's circular field of view and a z extent limited to the lungs plus a margin."""
    fov_draw, z_draw = d.unit(), d.unit()
    return {"fov": {"apply": fov_draw < a.fov_probability, "radius_fraction": d.u(*a.fov_radius_fraction),
                    "center_offset_mm": [d.sym(a.fov_center_jitter_mm), d.sym(a.fov_center_jitter_mm)]},
            "z_extent": {"apply": z_draw < a.z_extent_probability, "margin_top_mm": d.u(*a.z_margin_mm),
                         "margin_bottom_mm": d.u(*a.z_margin_mm)}}


def draw_params(a: "AnatomyConfig", seed: int) -> dict:
    """Every random choice of one case, drawn in a fixed order from ``default_rng(seed)``.

    The order never depends on the config's probabilities or ranges, so forcing a feature on or
    off (truncation, child, scoliosis, breasts, arms) keeps every other draw of the same seed.
    The deformation entries hold the effective amplitudes: ``breath`` and ``habitus.child_degree``
    record drivers whose contributions are already included in ``lungs``, ``diaphragm``, ``ribs``,
    ``hu.lung``, ``heart`` and ``affine.scale``.
    """
    d = _Draws(np.random.default_rng(int(seed)))
    h = _pose_and_habitus(d, a)
    # breathing
    breath = d.u(*a.breath)
    lung_l, lung_r = d.u(*a.lung_scale), d.u(*a.lung_scale)
    dome_l, dome_r = d.sym(a.diaphragm_mm), d.sym(a.diaphragm_mm)
    body = _heart_spine_ribs(d, a, h["t"], breath)
    p = {
        "seed": int(seed),
        "affine": {"rotation_deg": h["rotation"], "scale": h["scale"], "shift_mm": h["shift"]},
        "habitus": {"body_size": h["size"], "child": bool(h["child"]), "child_degree": h["t"],
                    "chest_shape": h["chest_shape"], "fat_shell": h["fat_shell"]},
        "breath": {"state": breath},
        "lungs": {"scale_left": a.breath_lung_scale * breath + lung_l,
                  "scale_right": a.breath_lung_scale * breath + lung_r},
        "heart": body["heart"],
        "diaphragm": {"left_mm": dome_l - a.breath_diaphragm_mm * breath,
                      "right_mm": dome_r - a.breath_diaphragm_mm * breath},
        "spine": body["spine"],
        "ribs": body["ribs"],
    }
    lung_hu = a.breath_lung_hu * breath + a.lung_hu_per_scale * (lung_l + lung_r) / 2 + d.sym(a.lung_hu)
    p["hu"] = {"lung": float(lung_hu), "fat": d.sym(a.fat_hu), "soft": d.sym(a.soft_hu), "blood": d.u(*a.blood_hu),
               "bone_scale": d.u(*a.bone_scale), "noise_hu": d.u(*a.noise_hu),
               "noise_seed": int(d.rng.integers(0, 2**31 - 1))}
    p.update(_added_structures(d, a, h))
    if p["breasts"]["apply"]:  # the cube is centred on the body's extent, breasts included
        p["affine"]["shift_mm"][1] += 0.5 * p["breasts"]["depth_mm"]
    p.update(_truncation(d, a))
    return p


def identity_params(a: "AnatomyConfig") -> dict:
    """Parameters that reproduce the source CT on the model cube (no change, no noise, no cut)."""
    p = draw_params(a, 0)
    p["affine"] = {"rotation_deg": [0.0] * 3, "scale": [1.0] * 3, "shift_mm": [0.0] * 3}
    p["habitus"] = {"body_size": 1.0, "child": False, "child_degree": 0.0, "chest_shape": 0.0, "fat_shell": 0.0}
    p["breath"] = {"state": 0.0}
    p["lungs"] = {"scale_left": 0.0, "scale_right": 0.0}
    p["heart"] = {"scale": 0.0, "shift_mm": [0.0] * 3}
    p["diaphragm"] = {"left_mm": 0.0, "right_mm": 0.0}
    p["spine"] = {"lateral_c_mm": 0.0, "lateral_s_mm": 0.0, "ap_mm": 0.0, "scoliosis": False}
    p["ribs"] = {"spacing": 0.0, "angle": 0.0}
    p["hu"].update(lung=0.0, fat=0.0, soft=0.0, blood=0.0, bone_scale=1.0, noise_hu=0.0)
    p["breasts"]["apply"] = False
    p["arms"]["apply"] = False
    p["fov"]["apply"] = False
    p["z_extent"]["apply"] = False
    return p
