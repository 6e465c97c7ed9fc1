"""Synthetic chests from the real sample CT: determinism, plausibility, smoothness, cache, gallery."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from axonct.config import data_preset
from axonct.io.ct_preprocess import unit_to_hu
from axonct.errors import AxonInputError
from axonct.app.synth_command import add_synth_arguments, run_synth
from axonct.data.synthetic_anatomy import (
    LUNG_LEFT,
    LUNG_RIGHT,
    AnatomyConfig,
    SyntheticChestGenerator,
    case_seed,
    jacobian_determinant,
)
from axonct.data.synthetic_cache import assert_disjoint, write_synthetic_cache
from axonct.tools.gallery import save_gallery


@pytest.fixture(scope="module")
def labels_path(real_ct_path) -> Path:
    path = real_ct_path.parent / "mask.nii.gz"
    if not path.exists():
        pytest.skip(f"label map not found at {path}")
    return path


@pytest.fixture(scope="module")
def gen(real_ct_path, labels_path, one_thread) -> SyntheticChestGenerator:
    return SyntheticChestGenerator(data_preset("tiny"), AnatomyConfig(), real_ct_path, labels_path,
                                   real_ct_path.parent / "structures.csv")


@pytest.fixture(scope="module")
def reference(gen):
    return gen.reference()


def _ids(gen, names):
    return [gen.structures[n][0] for n in names]


def _centroid_x(labels, ids):
    idx = np.argwhere(np.isin(labels, ids))
    return idx[:, 2].mean()


def test_same_seed_same_chest(gen):
    a, b = gen.generate(123), gen.generate(123)
    assert np.array_equal(a.unit, b.unit)
    assert np.array_equal(a.labels, b.labels)
    assert json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)


def test_different_seeds_differ(gen):
    a, b = gen.generate(1), gen.generate(2)
    assert np.abs(a.unit - b.unit).mean() > 0.005
    assert a.params["affine"] != b.params["affine"]
    assert a.params["lungs"] != b.params["lungs"]
    assert a.params["hu"]["noise_seed"] != b.params["hu"]["noise_seed"]


def test_reference_reproduces_the_source(gen, reference):
    from axonct.io.ct import read_ct
    from axonct.io.ct_preprocess import ct_to_model

    direct = ct_to_model(read_ct(gen.ct_path), gen.config.grid, remove_bed=True, center_lps=gen.center_lps)
    assert np.abs(reference.unit - direct.array).max() < 1e-3


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_chests_are_plausible(gen, reference, seed):
    c = gen.generate(seed)
    hu = unit_to_hu(c.unit, c.config.grid)
    assert np.isfinite(c.unit).all() and c.unit.min() >= 0.0 and c.unit.max() <= 1.0
    body = hu > -500
    assert 0.05 < body.mean() < 0.6  # a body, neither empty nor filling the cube
    lung_ids = _ids(gen, LUNG_LEFT + LUNG_RIGHT)
    ratio = np.isin(c.labels, lung_ids).sum() / np.isin(reference.labels, lung_ids).sum()
    assert 0.6 < ratio < 1.6
    lung_hu = np.median(hu[np.isin(c.labels, lung_ids)])
    assert -950 < lung_hu < -650  # still aerated parenchyma
    heart = c.labels == gen.ids["heart"]
    assert heart.sum() > 0.5 * (reference.labels == gen.ids["heart"]).sum()
    assert np.mean(hu[heart] > -300) > 0.9  # heart tissue, not air: inside the body
    # heart between the lungs (+x is patient-left, the last array axis)
    assert _centroid_x(c.labels, _ids(gen, LUNG_RIGHT)) < _centroid_x(c.labels, [gen.ids["heart"]]) \
        < _centroid_x(c.labels, _ids(gen, LUNG_LEFT))
    bone = np.isin(c.labels, gen.spine_ids)
    assert np.median(hu[bone]) > 100  # vertebrae still dense


def _extreme(gen, params, sign):
    """Every deformation amplitude at the edge of its range (all pushing the same way)."""
    a = gen.anatomy
    p = json.loads(json.dumps(params))
    p.pop("deformation_scale", None)
    pick = (lambda r: r[1]) if sign > 0 else (lambda r: r[0])
    p["lungs"] = {"scale_left": pick(a.lung_scale), "scale_right": pick(a.lung_scale)}
    p["heart"] = {"scale": pick(a.heart_scale), "shift_mm": [sign * m for m in a.heart_shift_mm]}
    p["diaphragm"] = {"left_mm": sign * a.diaphragm_mm, "right_mm": -sign * a.diaphragm_mm}
    p["spine"] = {"lateral_c_mm": sign * a.spine_lateral_mm, "lateral_s_mm": sign * a.spine_lateral_mm / 2,
                  "ap_mm": sign * a.spine_ap_mm}
    p["ribs"] = {"spacing": sign * a.rib_spacing, "angle": sign * a.rib_angle}
    return p


@pytest.mark.parametrize("case", ["seed0", "seed1", "seed2", "extreme+", "extreme-"])
def test_deformation_is_smooth_and_invertible(gen, case):
    params = gen.draw_params(case_seed(0, int(case[-1]))) if case.startswith("seed") else \
        _extreme(gen, gen.draw_params(7), 1 if case.endswith("+") else -1)
    q, step = gen.sampling_map(params, points=33)
    af = params["affine"]
    det = jacobian_determinant(q, step) * float(np.prod(af["scale"]))  # local part only
    assert det.min() >= gen.anatomy.min_jacobian - 1e-6
    assert det.max() < 2.0
    # displacement gradient of the local field bounded (no folds, no tearing)
    q0, _ = gen.sampling_map(gen.identity_params() | {"affine": af}, points=33)
    grads = np.stack([np.gradient(q - q0, step, axis=ax) for ax in (0, 1, 2)])
    assert np.abs(grads).max() < 0.8
    if case.startswith("extreme"):
        assert np.abs(q - q0).max() > 10.0  # the extremes really deform (the test can see a no-op)


def test_jacobian_guard_scales_down_strong_fields(gen):
    strict = SyntheticChestGenerator.__new__(SyntheticChestGenerator)
    strict.__dict__.update(gen.__dict__)
    strict.anatomy = AnatomyConfig(min_jacobian=0.9)
    params = _extreme(strict, strict.draw_params(7), 1)
    q, step = strict.sampling_map(params, points=33)
    assert 0.0 < params["deformation_scale"] < 1.0
    det = jacobian_determinant(q, step) * float(np.prod(params["affine"]["scale"]))
    assert det.min() >= 0.85  # the guard checks on a coarser grid; a finer one sees nearly the same


def test_forced_fov_truncates(gen):
    seed = 11
    full = SyntheticChestGenerator.__new__(SyntheticChestGenerator)
    full.__dict__.update(gen.__dict__)
    full.anatomy = AnatomyConfig(fov_probability=0.0, z_extent_probability=0.0)
    cut = SyntheticChestGenerator.__new__(SyntheticChestGenerator)
    cut.__dict__.update(gen.__dict__)
    cut.anatomy = AnatomyConfig(fov_probability=1.0, fov_radius_fraction=(0.8, 0.85), z_extent_probability=1.0,
                                z_margin_mm=(5.0, 10.0))
    a, b = full.generate(seed), cut.generate(seed)
    assert not a.params["fov"]["apply"] and b.params["fov"]["apply"] and b.params["z_extent"]["apply"]
    body_a, body_b = a.unit > 0.004, b.unit > 0.004
    assert body_b.sum() < 0.95 * body_a.sum()
    n, s = b.config.grid.size, b.config.grid.spacing_mm
    coords = (np.arange(n) - (n - 1) / 2.0) * s
    lo, hi = b.params["z_extent"]["range_mm"]
    assert not body_b[coords > hi + 1e-6].any() and not body_b[coords < lo - 1e-6].any()
    assert body_a[coords > hi + 1e-6].any() or body_a[coords < lo - 1e-6].any()
    r = b.params["fov"]["radius_mm"]
    cx, cy = b.params["fov"]["center_mm"]
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    outer = np.hypot(xx - cx, yy - cy) > r + 1e-6
    assert not body_b[:, outer].any() and body_a[:, outer].sum() > 100  # the circle cut real body
    assert b.labels[:, outer].max() == 0 and b.labels[coords > hi + 1e-6].max() == 0


def test_cache_readable_resumable_and_batchable(gen, tmp_path):
    from axonct.io.atomic import PARTIAL_TAG
    from axonct.data.datasets import Augmentation, BatchMaker, CTCache

    out = tmp_path / "train"
    man = write_synthetic_cache(out, gen.config, 3, seed=1, generator=gen)
    assert [c["case_id"] for c in man["cases"]] == ["SYN1-00000", "SYN1-00001", "SYN1-00002"]
    cache = CTCache(out, expected=data_preset("tiny"))
    assert cache.case_ids("train") == cache.all_ids and cache.case_ids("test") == []
    ct, drr = cache.load("SYN1-00001")
    assert ct.shape == (64, 64, 64) and drr.shape == (2, 64, 64)
    assert np.load(out / "cases" / "SYN1-00001" / "ct.npy").dtype == np.float16
    info = json.loads((out / "cases" / "SYN1-00001" / "case.json").read_text())
    assert info["case_seed"] == case_seed(1, 1) and info["params"]["seed"] == case_seed(1, 1)
    direct = gen.generate(case_seed(1, 1))
    assert np.abs(ct - direct.unit).max() < 2e-3
    assert np.allclose(drr, direct.render_drr(), rtol=1e-4, atol=1e-3)
    batch = BatchMaker(cache, cache.case_ids("train"), 2, Augmentation()).batch(0, 2, seed=0)
    assert batch["x0_hi"].shape == (2, 1, 64, 64, 64) and batch["x0"].shape == (2, 1, 32, 32, 32)
    assert batch["views"].shape == (2, 2, 64, 64)
    # resume: a killed write and a missing case are repaired, finished cases are not rewritten
    before = (out / "cases" / "SYN1-00000" / "ct.npy").stat().st_mtime_ns
    import shutil

    shutil.rmtree(out / "cases" / "SYN1-00002")
    (out / "cases" / f".SYN1-00002{PARTIAL_TAG}x").mkdir()
    man = write_synthetic_cache(out, gen.config, 4, seed=1, generator=gen)
    assert man["skipped_as_finished"] == 2 and len(man["cases"]) == 4
    assert (out / "cases" / "SYN1-00000" / "ct.npy").stat().st_mtime_ns == before
    assert not list((out / "cases").glob(f".*{PARTIAL_TAG}*"))
    ct2, _ = CTCache(out).load("SYN1-00002")
    assert np.abs(ct2 - gen.generate(case_seed(1, 2)).unit).max() < 2e-3
    with pytest.raises(AxonInputError, match="set seed 1"):
        write_synthetic_cache(out, gen.config, 4, seed=5, generator=gen)


def test_held_out_sets_are_disjoint(gen, tmp_path):
    train = tmp_path / "sets" / "train"
    write_synthetic_cache(train, gen.config, 2, seed=10, generator=gen)
    test = tmp_path / "sets" / "test"
    write_synthetic_cache(test, gen.config, 2, seed=11, split="test", generator=gen, disjoint_from=[train])
    assert_disjoint(train, test)
    from axonct.data.datasets import CTCache

    assert CTCache(test).case_ids("test") == ["SYN11-00000", "SYN11-00001"]
    # the same set seed next to an existing set is refused
    with pytest.raises(AxonInputError, match="already uses synthetic set seed 10"):
        write_synthetic_cache(tmp_path / "sets" / "again", gen.config, 1, seed=10, generator=gen)
    # elsewhere it can be written, but then the overlap is caught
    copy = tmp_path / "elsewhere" / "copy"
    write_synthetic_cache(copy, gen.config, 1, seed=10, split="test", generator=gen)
    with pytest.raises(AxonInputError, match="shares 1 synthetic case seed"):
        assert_disjoint(train, copy)
    with pytest.raises(AxonInputError, match="already holds"):
        write_synthetic_cache(tmp_path / "third" / "copy2", gen.config, 1, seed=10, generator=gen,
                              disjoint_from=[train])
    assert len({case_seed(s, i) for s in range(20) for i in range(50)}) == 1000


def test_gallery_png(gen, tmp_path):
    chests = [gen.generate(s) for s in (1, 2, 3)]
    path = save_gallery(chests, tmp_path / "g.png", n=3, tile=96)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (5 * 96, 3 * (96 + 16))
        arr = np.asarray(im)
    assert arr.std() > 20  # images, not a blank canvas
    assert not list(tmp_path.glob(".*partial*"))


def test_mismatched_label_map_is_refused(real_ct_path, labels_path, tmp_path):
    small = sitk.BinShrink(sitk.ReadImage(str(labels_path)), [2, 2, 1])
    bad = tmp_path / "bad_mask.nii.gz"
    sitk.WriteImage(small, str(bad))
    with pytest.raises(AxonInputError) as err:
        SyntheticChestGenerator(data_preset("tiny"), ct_path=real_ct_path, labels_path=bad,
                                structures_path=real_ct_path.parent / "structures.csv")
    assert err.value.path == str(bad) and "geometry differs" in str(err.value)
    with pytest.raises(AxonInputError) as err:
        SyntheticChestGenerator(data_preset("tiny"), ct_path=real_ct_path, labels_path=tmp_path / "none.nii.gz")
    assert "none.nii.gz" in str(err.value)


def _args(argv):
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    return parser.parse_args(argv)


def test_cli_glue(real_ct_path, labels_path, tmp_path, one_thread):
    with pytest.raises(AxonInputError, match="unknown preset"):
        run_synth(_args(["--out", str(tmp_path / "x"), "--count", "1", "--preset", "huge"]))
    with pytest.raises(AxonInputError) as err:
        run_synth(_args(["--out", str(tmp_path / "x"), "--count", "1", "--preset", "tiny",
                         "--labels", str(tmp_path / "missing.nii.gz")]))
    assert "missing.nii.gz" in str(err.value)
    out, png = tmp_path / "cli", tmp_path / "cli.png"
    rc = run_synth(_args(["--out", str(out), "--count", "1", "--seed", "3", "--preset", "tiny", "--split", "test",
                          "--ct", str(real_ct_path), "--labels", str(labels_path), "--gallery", str(png),
                          "--gallery-count", "1"]))
    assert rc == 0 and png.exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["synthetic"]["set_seed"] == 3 and man["cases"][0]["case_seed"] == case_seed(3, 0)
