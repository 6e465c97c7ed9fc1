"""`axon evaluate`: metric values on known cases, both conventions, files, and the split harness."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from axonct.config import VolumeGrid
from axonct.io.ct_preprocess import ct_to_model
from axonct.tools.compare import compare, evaluate_files
from axonct.tools.evaluate import evaluate_cache
from synthetic import synthetic_chest, write_nifti

GRID = VolumeGrid(size=32, fov_mm=320.0)


def _volume(seed=0):
    return ct_to_model(synthetic_chest(seed=seed), GRID).array


def test_identical_volumes_are_perfect():
    v = _volume()
    m = compare(v, v.copy(), GRID)
    assert m["honest"]["psnr"] == math.inf and m["x2ct"]["psnr"] == math.inf
    assert m["honest"]["ssim"] == pytest.approx(1.0) and m["x2ct"]["ssim"] == pytest.approx(1.0)
    assert m["mae_hu"] == 0.0


def test_known_noise_gives_the_known_psnr():
    """Gaussian noise of sigma 0.02 on [0, 1] data: PSNR = -20 log10(0.02) = 33.98 dB (clipping aside)."""
    v = np.full((32, 32, 32), 0.5, np.float32)
    noisy = v + np.random.default_rng(0).normal(0, 0.02, v.shape).astype(np.float32)
    m = compare(noisy, v, GRID)
    assert m["honest"]["psnr"] == pytest.approx(-20 * math.log10(0.02), abs=0.05)
    assert m["mae_hu"] == pytest.approx(0.02 * math.sqrt(2 / math.pi) * 2500, rel=0.02)


def test_x2ct_convention_adds_the_expected_decibels():
    """A uniform error of 100/2500: X2CT PSNR (peak 4095 on [0, 2500]) = honest + 20 log10(4095/2500)."""
    v = _volume(1)
    v = np.clip(np.round(v * 2500) / 2500, 0, 0.9)
    shifted = v + 100 / 2500
    m = compare(shifted, v, GRID)
    assert m["honest"]["psnr"] == pytest.approx(20 * math.log10(2500 / 100), abs=1e-3)
    assert m["x2ct"]["psnr"] - m["honest"]["psnr"] == pytest.approx(20 * math.log10(4095 / 2500), abs=1e-3)


def test_evaluate_files_puts_the_ground_truth_on_the_model_grid(tmp_path):
    gt_path = write_nifti(synthetic_chest(seed=3), tmp_path / "gt.nii.gz")
    pred = ct_to_model(synthetic_chest(seed=3), GRID)
    pred_path = tmp_path / "pred.nrrd"
    import SimpleITK as sitk

    sitk.WriteImage(pred.to_hu_image(), str(pred_path))
    same = evaluate_files(pred_path, gt_path, montage=tmp_path / "m.png")
    assert same["honest"]["psnr"] > 80 and same["mae_hu"] < 0.1
    assert (tmp_path / "m.png").exists()
    other = evaluate_files(pred_path, write_nifti(synthetic_chest(seed=9), tmp_path / "other.nii.gz"))
    assert other["honest"]["psnr"] < 40 and other["mae_hu"] > 5


def test_evaluate_split_compares_methods_and_stage_cuts(tiny_cache, tiny_weights, tmp_path):
    summary = evaluate_cache(tiny_cache, "val", tiny_weights, tmp_path / "eval", steps=2, views="clean")
    methods = set(summary["methods"])
    cuts = ("stage I", "stages I+II", "stages I+II+III")
    assert methods == {"mean-CT atlas", "X2CT-style CNN", "template fit",
                       *(f"{v}, {c}" for v in ("AXON (no consistency)", "AXON + consistency") for c in cuts)}
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv")))
    assert len(rows) == len(methods) * summary["cases"]
    assert all(r["case_is"] == "held out" for r in rows)
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1
        assert 0 <= float(r["input_residual"]) <= 1 and 0 <= float(r["oblique_residual"]) <= 1
    table = (tmp_path / "eval" / "summary.md").read_text()
    assert "| template fit |" in table and "oblique residual" in table
    assert len(list((tmp_path / "eval" / "montages").glob("*.png"))) == summary["cases"]
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["split"] == "val"
