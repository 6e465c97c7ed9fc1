"""The lung-field guidance puts air behind the input's lung fields and takes it out elsewhere."""

from __future__ import annotations

import numpy as np
import torch

from axonct.config import data_preset
from axonct.guidance.consistency import ConsistencyConfig, ViewConsistency
from axonct.guidance.lung_fields import LungFieldGuidance, LungGuidanceConfig
from axonct.io.ct_preprocess import hu_to_unit

DATA = data_preset("tiny")
LO = DATA.diffusion_grid(2)


def _body_with_air_on_one_side():
    """A soft-tissue body (lung-like -300 HU core) with an air pocket on the patient's right only."""
    n = LO.size
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float32)
    c = (n - 1) / 2
    hu = np.full((n, n, n), -1000.0, np.float32)
    body = (((x - c) / (0.42 * n)) ** 2 + ((y - c) / (0.32 * n)) ** 2 < 1) & (np.abs(z - c) < 0.45 * n)
    hu[body] = 40.0
    core = body & (((x - c) / (0.34 * n)) ** 2 + ((y - c) / (0.2 * n)) ** 2 < 1) & (np.abs(z - c) < 0.3 * n)
    hu[core] = -300.0
    pocket = core & (x < c - 0.1 * n)
    hu[pocket] = -900.0
    return torch.from_numpy(hu_to_unit(hu, LO).astype(np.float32))[None]


def _fields(checker, left: bool, right: bool):
    p = checker.observed[0].shape[-1]
    f = np.zeros((len(checker.present), p, p), np.float32)
    c = p // 2
    rows = slice(int(0.3 * p), int(0.7 * p))
    if right:
        f[0, rows, int(0.2 * p):c - 2] = 1.0
    if left:
        f[0, rows, c + 2:int(0.8 * p)] = 1.0
    return f


def test_air_moves_to_the_lung_field_rays_and_leaves_the_others():
    u = _body_with_air_on_one_side()
    views = np.zeros((2, DATA.geometry.detector_pixels, DATA.geometry.detector_pixels), np.float32)
    checker = ViewConsistency(views, np.array([1.0, 0.0], np.float32), LO, DATA.geometry, ConsistencyConfig())
    support = checker.support(u)
    # the radiograph shows a lung field on the side without the pocket: air must go there and leave the pocket's side
    guide = LungFieldGuidance(_fields(checker, left=True, right=False), checker.projector, LO,
                              LungGuidanceConfig(step_hu=150.0, iterations=4, min_air_fraction=0.3))
    before = guide.violation(u, support)
    interior = guide.interior(support)
    frac0 = guide.air_fractions(u, interior)
    v = u
    for _ in range(6):
        v = guide.correct(v, support)
    frac1 = guide.air_fractions(v, interior)
    assert guide.violation(v, support) < 0.5 * before
    inside, outside = guide.inside.bool(), guide.outside.bool()
    assert float(frac1[0][inside].mean()) > float(frac0[0][inside].mean()) + 0.05
    assert float(frac1[0][outside & (frac0[0] > 0.05)].mean()) < float(frac0[0][outside & (frac0[0] > 0.05)].mean())
    # nothing changes outside the body, and values stay in range
    air_outside = (support == 0)
    assert torch.equal(v[air_outside], u[air_outside])
    assert float(v.min()) >= 0 and float(v.max()) <= 1


def test_satisfied_constraints_leave_the_volume_alone():
    u = _body_with_air_on_one_side()
    views = np.zeros((2, DATA.geometry.detector_pixels, DATA.geometry.detector_pixels), np.float32)
    checker = ViewConsistency(views, np.array([1.0, 0.0], np.float32), LO, DATA.geometry, ConsistencyConfig())
    guide = LungFieldGuidance(_fields(checker, left=False, right=False), checker.projector, LO,
                              LungGuidanceConfig(max_air_fraction=1.0))
    assert torch.equal(guide.correct(u, checker.support(u)), u)
    assert LungFieldGuidance(_fields(checker, True, True), checker.projector, LO,
                             LungGuidanceConfig(strength=0.0)).correct(u, checker.support(u)) is u
