"""`axon evaluate --suite`: the default reconstruction path on a data folder laid out like
../shared/data (a miniature one built here from the sample CT and synthetic chests, and the real one
when it is on this machine)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from axonct.tools.evaluate_suite import evaluate_suite, read_suite

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MANIFEST_COLUMNS = ["path", "kind", "patient", "view", "role", "pair_id", "image_path"]


@pytest.fixture(scope="module")
def mini_suite(tmp_path_factory, real_ct_path) -> Path:
    """The sample CT as the evaluation CT, a synthetic chest as the training CT (the atlas), and a
    synthetic chest's realistic DRRs as a frontal radiograph with its exact lung mask and a PA +
    lateral pair."""
    import torch

    from axonct.data.synthetic_anatomy import SyntheticChestGenerator
    from axonct.io.montage import to_uint8
    from axonct.models.lung_fields import project_lung_fields
    from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
    from axonct.presets import model_preset

    root = tmp_path_factory.mktemp("suite")
    for d in ("ct/eval", "ct/train", "cxr/eval/images", "cxr/eval/masks"):
        (root / d).mkdir(parents=True)
    (root / "ct/eval/sample.nii.gz").symlink_to(real_ct_path)
    data = model_preset("cpu").data
    gen = SyntheticChestGenerator(data)
    train = gen.generate(31)
    sitk.WriteImage(train.model_volume().to_hu_image(), str(root / "ct/train/chest31.nii.gz"))
    chest = gen.generate(47)
    views = simulate_radiograph(torch.from_numpy(chest.render_drr()), RealismConfig.mild(), seed=0).numpy()
    fields = np.asarray(project_lung_fields(chest.lung_mask(), data))[0] > 0.5
    mask = np.zeros(fields.shape, np.uint8)
    half = mask.shape[1] // 2
    mask[:, :half][fields[:, :half]] = 1  # the patient's right lung on the image's left
    mask[:, half:][fields[:, half:]] = 2
    Image.fromarray(to_uint8(views[0])).save(root / "cxr/eval/images/xr1.png")
    Image.fromarray(to_uint8(views[1])).save(root / "cxr/eval/images/xr1_lat.png")
    Image.fromarray(mask).save(root / "cxr/eval/masks/xr1_lungs.png")
    rows = [
        {"path": "ct/eval/sample.nii.gz", "kind": "ct", "patient": "LIDC-IDRI-0001", "role": "eval"},
        {"path": "ct/train/chest31.nii.gz", "kind": "ct", "patient": "S31", "role": "train"},
        {"path": "cxr/eval/images/xr1.png", "kind": "cxr", "patient": "S47", "view": "PA", "role": "eval",
         "pair_id": "pair1"},
        {"path": "cxr/eval/images/xr1_lat.png", "kind": "cxr", "patient": "S47", "view": "L", "role": "eval",
         "pair_id": "pair1"},
        {"path": "cxr/eval/masks/xr1_lungs.png", "kind": "mask", "patient": "S47", "view": "PA", "role": "eval",
         "image_path": "cxr/eval/images/xr1.png"},
    ]
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def weights_with_lung_fields(tiny_weights, tmp_path_factory) -> Path:
    """The tiny test weights plus the bundled lung-field network (framing and Dice need it)."""
    from axonct.models.lung_fields import CARD_FILE, WEIGHTS_FILE
    from axonct.pipeline.loading import default_weights_dir

    folder = tmp_path_factory.mktemp("weights") / "tiny"
    shutil.copytree(tiny_weights, folder)
    for name in (WEIGHTS_FILE, CARD_FILE):
        shutil.copy(default_weights_dir() / name, folder / name)
    return folder


def test_the_manifest_gives_the_cases(mini_suite):
    suite = read_suite(mini_suite)
    assert [c.id for c in suite.cts] == ["sample"] and [c.id for c in suite.training_cts] == ["chest31"]
    assert [c.id for c in suite.radiographs] == ["xr1"] and "mask" in suite.radiographs[0].files
    assert [c.id for c in suite.pairs] == ["pair1"] and set(suite.pairs[0].files) == {"frontal", "lateral", "mask"}


def test_the_suite_runs_the_default_path_and_writes_its_tables(mini_suite, weights_with_lung_fields, tmp_path):
    out = tmp_path / "suite"
    summary = evaluate_suite(mini_suite, out, weights=weights_with_lung_fields, device="cpu", precision="fp32",
                             steps=2, log=lambda m: None)
    for name in ("ct_cases.csv", "radiographs.csv", "pairs.csv", "summary.json", "summary.md",
                 "montages/sample.png", "montages/xr1.png", "montages/pair1.png", "volumes/sample_biplanar.nrrd",
                 "volumes/sample_frontal_only.nrrd", "volumes/sample_biplanar_png.nrrd"):
        assert (out / name).stat().st_size > 0, name
    rows = {r["method"]: r for r in csv.DictReader(open(out / "ct_cases.csv"))}
    assert set(rows) == {"AXON biplanar", "AXON frontal-only", "AXON biplanar, --framing none",
                         "AXON biplanar from the PNG copies", "mean-CT atlas"}
    assert rows["AXON biplanar"]["framing"] == "frontal pixel-spacing, lateral pixel-spacing"
    assert rows["AXON biplanar from the PNG copies"]["framing"] == "frontal lung-fields, lateral lung-fields"
    assert all(r["status"] == "ok" and r["case_is"] == "held out" for r in rows.values())
    # `axon drr`'s files carry their geometry: the default path frames them physically, which is
    # exactly the unframed view, so the default can never score below --framing none on them
    assert float(rows["AXON biplanar"]["psnr"]) == pytest.approx(float(rows["AXON biplanar, --framing none"]["psnr"]),
                                                                  abs=1e-6)
    assert 5 < float(rows["mean-CT atlas"]["psnr"]) < 40
    xr = next(csv.DictReader(open(out / "radiographs.csv")))
    assert xr["status"] == "ok" and xr["framing"] == "lung-fields"
    assert float(xr["network_dice"]) > 0.7  # the exact projected lungs of a synthetic chest
    assert 0 <= float(xr["reconstruction_dice"]) <= 1 and xr["plausible"] in ("True", "False")
    pair = next(csv.DictReader(open(out / "pairs.csv")))
    assert pair["status"] == "ok" and pair["lateral"].endswith("xr1_lat.png")
    saved = json.loads((out / "summary.json").read_text())
    assert saved["ct"]["AXON biplanar"]["cases"] == 1 and saved["radiographs"]["network_dice"]["n"] == 1
    assert "chest31.nii.gz" in saved["atlas"] and "sample" not in saved["atlas"]  # never the evaluated case
    assert summary["pairs"]["reconstructed"] == 1
    assert "| AXON biplanar |" in (out / "summary.md").read_text()


def test_a_folder_without_a_manifest_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "evaluate", "--suite", str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "has no manifest.csv" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (SHARED_DATA / "manifest.csv").is_file(), reason="real data (../shared/data) not present")
def test_the_real_suite_one_case_each(tmp_path):
    """The CI-sized suite on the real data: one evaluation CT, one radiograph with a mask, one pair,
    with the bundled weights through `axon evaluate --suite`."""
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "evaluate", "--suite", str(SHARED_DATA),
                           "--out", str(out), "--max-cases", "1", "--steps", "4", "--precision", "fp32"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ct = summary["ct"]
    assert ct["AXON biplanar"]["psnr"] >= ct["AXON biplanar, --framing none"]["psnr"] - 1e-6
    assert summary["radiographs"]["reconstructed"] == 1 and summary["pairs"]["reconstructed"] == 1
    assert summary["radiographs"]["network_dice"]["mean"] > 0.5
    # the suite's score agrees with an independent one written here with scipy (the body: the largest
    # component above -500 HU after a 2.5 mm opening, holes filled per axial slice; the ground truth's table and
    # anything else outside it set to air; centroids aligned by translation; trilinear sampling on
    # the reconstruction's grid after a Gaussian where the truth is finer; air beyond the scanned
    # slab) within 0.5 dB
    case = next(iter(ct["AXON biplanar"]["per_case_psnr"]))
    gt = sitk.ReadImage(str(SHARED_DATA / "ct" / "eval" / f"{case}.nii.gz"))
    for method, name in (("AXON biplanar", "biplanar"), ("AXON biplanar from the PNG copies", "biplanar_png")):
        pred = sitk.ReadImage(str(out / "volumes" / f"{case}_{name}.nrrd"))  # the PNG run is framed: other voxels
        assert abs(independent_psnr(pred, gt) - ct[method]["per_case_psnr"][case]) < 0.5, method


def _body(hu: np.ndarray, spacing_zyx) -> np.ndarray:
    """Largest component above -500 HU after an opening of 2.5 mm radius (cuts the table and cables
    off the body), holes filled per axial slice."""
    from scipy import ndimage

    r = [int(round(2.5 / s)) for s in spacing_zyx]
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    ball = sum((g / max(k, 1)) ** 2 for g, k in zip(grid, r)) <= 1.0
    dense = ndimage.binary_opening(hu > -500, structure=ball)
    lab, n = ndimage.label(dense)
    largest = lab == (np.argmax(ndimage.sum(dense, lab, range(1, n + 1))) + 1)
    body = np.stack([ndimage.binary_fill_holes(s) for s in largest])  # [z, y, x]: axial slices first
    return body, ndimage.binary_dilation(body, structure=ball)  # the second keeps the skin's rim


def independent_psnr(pred: sitk.Image, gt: sitk.Image) -> float:
    """Honest 3D PSNR of ``pred`` against ``gt`` moved so their body centroids coincide, on
    ``pred``'s grid, HU clipped to [-1024, 1476] (both on axial-first grids, as the suite's are)."""
    from scipy import ndimage

    def centroid(image, body):
        zyx = np.argwhere(body).mean(0)
        return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))

    p = np.clip(sitk.GetArrayFromImage(pred).astype(np.float64), -1024, 1476)
    hu = np.clip(sitk.GetArrayFromImage(gt).astype(np.float64), -1024, 1476)
    gt_body, gt_kept = _body(hu, gt.GetSpacing()[::-1])
    # anti-aliasing where the ground truth is finer: sigma (coarse - fine) / 2 mm per axis
    sigma = [max(0.0, (o - s) / 2) / s for o, s in zip(pred.GetSpacing()[::-1], gt.GetSpacing()[::-1])]
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    hu[~gt_kept] = -1024.0
    shift = centroid(pred, _body(p, pred.GetSpacing()[::-1])[0]) - centroid(gt, gt_body)
    size = pred.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in size], indexing="ij"), -1).reshape(-1, 3)
    direction = np.array(pred.GetDirection()).reshape(3, 3)
    points = np.asarray(pred.GetOrigin()) + (idx * pred.GetSpacing()) @ direction.T - shift
    g_dir = np.array(gt.GetDirection()).reshape(3, 3)
    g_idx = (points - np.asarray(gt.GetOrigin())) @ g_dir / np.asarray(gt.GetSpacing())
    # a voxel spans half its spacing on either side of its centre: an 8 mm slice scanned 4 mm beyond
    # the last centre; further out the scan saw nothing and the truth is air
    extent = np.asarray(hu.shape[::-1], float)  # (x, y, z)
    scanned = ((g_idx >= -0.5) & (g_idx <= extent - 0.5)).all(1)
    g = ndimage.map_coordinates(hu, np.clip(g_idx, 0, extent - 1)[:, ::-1].T, order=1, mode="nearest")
    g[~scanned] = -1024.0
    g = g.reshape(size[0], size[1], size[2]).transpose(2, 1, 0)  # (x, y, z) -> [z, y, x]
    mse = float((((p - g) / 2500.0) ** 2).mean())
    return 10 * np.log10(1.0 / mse)
