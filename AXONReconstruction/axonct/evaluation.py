"""`axon evaluate`: reconstructions against ground truth, in two labelled metric conventions.

- honest: PSNR over the whole 3D volume on [0, 1] data (peak 1) and 3D SSIM with a Gaussian window;
- x2ct: the X2CT-GAN papers' numbers: volumes as integers in [0, 2500] but PSNR with peak 4095
  (about +4.3 dB), PSNR and SSIM per 2D slice along each of the three axes, averaged; SSIM with a
  7x7 uniform window and sample covariance on [0, 1] data.
The ground truth goes to the model grid exactly as in training (`ct_preprocess.ct_to_model`).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .output_policy import Outputs
from .config import VolumeGrid
from .ct_preprocess import ct_to_model, hu_to_unit, unit_to_hu
from .errors import AxonInputError
from .metrics import psnr, ssim
from .montage import orthogonal_slices, save_montage

X2CT_RANGE, X2CT_PEAK = 2500.0, 4095.0


def _slices(vol: torch.Tensor):
    """Every 2D slice along each of the three axes, as three [n, 1, h, w] batches."""
    return [vol.permute(*order)[:, None] for order in ((0, 1, 2), (1, 0, 2), (2, 0, 1))]


def x2ct_psnr(pred_unit: np.ndarray, gt_unit: np.ndarray) -> float:
    p = torch.from_numpy(np.round(np.clip(pred_unit, 0, 1) * X2CT_RANGE)).double()
    g = torch.from_numpy(np.round(np.clip(gt_unit, 0, 1) * X2CT_RANGE)).double()
    per_axis = []
    for ps, gs in zip(_slices(p), _slices(g)):
        mse = ((ps - gs) ** 2).flatten(1).mean(1)
        vals = [10 * math.log10(X2CT_PEAK**2 / float(m)) for m in mse if m > 0]
        per_axis.append(float(np.mean(vals)) if vals else math.inf)
    return float(np.mean(per_axis))


def ssim2d_uniform(a: torch.Tensor, b: torch.Tensor, win: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM of [n, 1, h, w] batches, uniform window, sample covariance, valid region."""
    k = lambda x: F.avg_pool2d(x, win, stride=1)  # noqa: E731
    n = win * win
    cov = n / (n - 1)
    ux, uy = k(a), k(b)
    vx, vy = cov * (k(a * a) - ux**2), cov * (k(b * b) - uy**2)
    vxy = cov * (k(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def x2ct_ssim(pred_unit: np.ndarray, gt_unit: np.ndarray) -> float:
    p = torch.from_numpy(np.round(np.clip(pred_unit, 0, 1) * X2CT_RANGE) / X2CT_RANGE).double()
    g = torch.from_numpy(np.round(np.clip(gt_unit, 0, 1) * X2CT_RANGE) / X2CT_RANGE).double()
    return float(np.mean([float(ssim2d_uniform(ps, gs).mean()) for ps, gs in zip(_slices(p), _slices(g))]))


def compare(pred_unit: np.ndarray, gt_unit: np.ndarray, grid: VolumeGrid) -> dict:
    """All metrics for one case; inputs are [D, H, W] unit volumes on the same grid."""
    if pred_unit.shape != gt_unit.shape:
        raise ValueError(f"shapes differ: prediction {pred_unit.shape}, ground truth {gt_unit.shape}")
    p = torch.from_numpy(np.clip(pred_unit, 0, 1).astype(np.float32))
    g = torch.from_numpy(np.clip(gt_unit, 0, 1).astype(np.float32))
    hu_p, hu_g = unit_to_hu(p.numpy(), grid), unit_to_hu(g.numpy(), grid)
    body = hu_g > -500
    return {
        "honest": {"psnr": psnr(p, g), "ssim": ssim(p, g),
                   "convention": "3D, [0,1] data, PSNR peak 1, SSIM 3D Gaussian window (sigma 1.5)"},
        "x2ct": {"psnr": x2ct_psnr(pred_unit, gt_unit), "ssim": x2ct_ssim(pred_unit, gt_unit),
                 "convention": "slice-wise along 3 axes; PSNR on [0,2500] with peak 4095; SSIM 7x7 uniform on [0,1]"},
        "mae_hu": float(np.abs(hu_p - hu_g).mean()),
        "mae_hu_body": float(np.abs(hu_p - hu_g)[body].mean()) if body.any() else None,
    }


def flat_metrics(m: dict) -> dict:
    return {"psnr": m["honest"]["psnr"], "ssim": m["honest"]["ssim"], "psnr_x2ct": m["x2ct"]["psnr"],
            "ssim_x2ct": m["x2ct"]["ssim"], "mae_hu": m["mae_hu"], "mae_hu_body": m["mae_hu_body"]}


def load_prediction(path: str | Path) -> tuple[np.ndarray, VolumeGrid]:
    """A reconstruction file (on a model grid: cube, isotropic, identity direction) as a unit volume."""
    from .ct_io import read_ct

    img = read_ct(path)
    size = img.GetSize()
    spacing = img.GetSpacing()
    if len(set(size)) != 1 or not np.allclose(spacing, spacing[0]) or \
            not np.allclose(np.array(img.GetDirection()), np.eye(3).ravel(), atol=1e-6):
        raise AxonInputError(path, f"is not on a model grid (size {size}, spacing {spacing}); "
                                   "pass an `axon reconstruct` output")
    grid = VolumeGrid(size=size[0], fov_mm=float(spacing[0] * size[0]))
    return hu_to_unit(sitk.GetArrayFromImage(img).astype(np.float32), grid), grid


def ground_truth_on_grid(path: str | Path, grid: VolumeGrid, remove_bed: bool = True,
                         hu_offset: float = 0.0) -> np.ndarray:
    from .ct_io import read_ct

    return ct_to_model(read_ct(path, hu_offset=hu_offset), grid, remove_bed=remove_bed).array


def evaluate_files(pred: str | Path, gt: str | Path, montage: str | Path | None = None,
                   hu_offset: float = 0.0, overwrite: bool = False, emit=None) -> dict:
    """``hu_offset`` applies to the ground truth only (a CT stored as HU+1024 without its rescale).
    The montage location is checked before any compute; ``emit(result)`` (e.g. printing the metrics)
    runs before the montage is written, so a failing montage cannot lose the metrics."""
    outputs = Outputs("evaluate", overwrite=overwrite)
    if montage:
        outputs.file(montage)
        outputs.check(4 << 20)
    p, grid = load_prediction(pred)
    g = ground_truth_on_grid(gt, grid, hu_offset=hu_offset)
    result = {"prediction": str(pred), "ground_truth": str(gt), "grid": {"size": grid.size, "fov_mm": grid.fov_mm},
              **compare(p, g, grid)}
    if montage:
        result["montage"] = str(montage)
    if emit is not None:
        emit(result)
    if montage:
        with outputs:
            save_comparison_montage(g, {"prediction": p}, outputs.path(montage))
    return result


def save_comparison_montage(gt: np.ndarray, preds: dict[str, np.ndarray], path: str | Path) -> Path:
    """Rows: ground truth, then each prediction and its absolute difference (axial, coronal, sagittal)."""
    rows = [[(f"truth {k}", v) for k, v in orthogonal_slices(gt).items()]]
    for name, p in preds.items():
        rows.append([(f"{name} {k}", v) for k, v in orthogonal_slices(p).items()])
        diff = {k: np.abs(a - b) for (k, a), b in zip(orthogonal_slices(p).items(), orthogonal_slices(gt).values())}
        rows.append([(f"|{name} - truth| {k}", (np.clip(v / 0.3, 0, 1) * 255).astype(np.uint8))
                     for k, v in diff.items()])
    return save_montage(rows, path, tile=160)


OBLIQUE_ANGLE_DEG = 45.0  # a view between PA and lateral that no model ever receives


def residual_views(data, view_mask: np.ndarray) -> list:
    """The given input views, then the held-out oblique view, for `drr_residuals`."""
    from .config import VIEWS
    from .geometry import view_at_angle, view_geometry

    geom = data.geometry
    names = [VIEWS[i] for i in range(len(VIEWS)) if float(view_mask[i]) > 0]
    return [view_geometry(n, geom) for n in names] + [view_at_angle(OBLIQUE_ANGLE_DEG, geom, "oblique")]


def render_for_residuals(unit: np.ndarray, data, views: list) -> torch.Tensor:
    from .drr import drr_from_unit_volume

    with torch.no_grad():
        return drr_from_unit_volume(torch.from_numpy(np.ascontiguousarray(unit, np.float32)),
                                    data.grid, data.geometry, views).double()


def drr_residuals(pred_unit: np.ndarray, gt_unit: np.ndarray, data, view_mask: np.ndarray,
                  gt_drrs: torch.Tensor | None = None) -> dict:
    """DRR disagreement with the truth on the given input views and on a held-out oblique view:
    matching the inputs only says the ray sums agree; the oblique view tests whether depth came out
    right too. Each is sqrt(1 - r^2) of the line integrals (r: Pearson correlation), the part of the
    truth's DRR that no affine intensity map of the prediction's DRR explains: 0 is a perfect match,
    1 no relation. It ignores a global density scale (PSNR and MAE already count that).
    ``gt_drrs``: the truth's `render_for_residuals`, when several predictions share one truth."""
    views = residual_views(data, view_mask)
    g = gt_drrs if gt_drrs is not None else render_for_residuals(gt_unit, data, views)
    p = render_for_residuals(pred_unit, data, views)
    rel = [unexplained_fraction(a, b) for a, b in zip(p, g)]
    return {"input_residual": float(np.mean(rel[:-1])), "oblique_residual": float(rel[-1])}


def unexplained_fraction(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """sqrt(1 - r^2): relative RMS error of the best affine fit of ``pred`` to ``truth``."""
    a, b = pred.flatten() - pred.mean(), truth.flatten() - truth.mean()
    den = float(a.norm() * b.norm())
    r = float(a @ b) / den if den > 0 else 0.0
    return math.sqrt(max(0.0, 1.0 - r * r))


# ----------------------------------------------------------------------------- whole split
def evaluate_cache(data: str | Path, split: str, weights: str | Path, out: str | Path, steps: int | None = None,
                   seed: int = 0, views: str = "realistic", device: str = "cpu", lateral: bool = True,
                   progress=None, consistency_strength: float = 1.0, ablation: bool = True,
                   template: bool = True, max_cases: int | None = None, fine_strength: float | None = None,
                   precision: str = "auto", overwrite: bool = False) -> dict:
    """Every case of a split, as an ablation on the final grid: the mean-CT atlas, the X2CT-style CNN
    (if trained), the template fit alone, and the pipeline without and with reprojection consistency,
    each cut after every stage. Columns: PSNR/SSIM in both conventions, MAE, and the DRR residuals
    on the input views and on a held-out oblique view. Writes cases.csv, summary.json and montages."""
    from .consistency import ConsistencyConfig
    from .datasets import Augmentation, BatchMaker, CTCache
    from .pipeline import AxonPipeline, to_final_grid
    from .xray_realism import RealismConfig

    from .runtime import resolve_device

    device = resolve_device(device)
    pipeline = AxonPipeline.load(weights, device, precision=precision)
    preset = pipeline.preset
    cache = CTCache(data, expected=preset.data)
    ids = cache.case_ids(split)
    if not ids:
        raise AxonInputError(data, f"has no cases in the {split!r} split")
    if max_cases is not None:
        ids = ids[: max(1, int(max_cases))]
    train_ids = set(pipeline.cards["coarse"]["trained_on"].get("cases", []))
    synth = cache.manifest.get("synthetic")
    synthetic_from = Path(synth["source_ct"]).name if isinstance(synth, dict) and synth.get("source_ct") else None
    aug = Augmentation.none()
    if views == "realistic":
        aug.realism = RealismConfig()
    maker = BatchMaker(cache, ids, preset.sr.factor, aug)
    atlas, atlas_source = training_atlas(cache, ids, pipeline.cards["coarse"].get("trained_on", {}), preset.data)
    baseline = _load_baseline(weights, preset, device)
    grid = preset.data.grid
    out = Path(out)
    outputs = Outputs("evaluate", overwrite=overwrite)  # checked before any compute, committed together
    outputs.folder(out)
    for name in ["cases.csv", "summary.json", "summary.md"] + [f"montages/{case}.png" for case in ids]:
        outputs.file(out / name)
    outputs.check(len(ids) * (2 << 20) + (1 << 20))
    variants = [("AXON", None)]
    if ablation or consistency_strength > 0:
        variants = ([("AXON (no consistency)", None)] if ablation else []) + \
                   [("AXON + consistency", ConsistencyConfig(strength=consistency_strength))]
    rows = []
    for n, case in enumerate(ids):
        gen = torch.Generator().manual_seed(seed + n)
        item = maker.sample(case, gen)
        gt = cache.load(case)[0].astype(np.float32)
        v = item["views"].numpy()
        mask = np.array([1.0, 1.0 if lateral else 0.0], np.float32)
        preds = {}
        if atlas is not None:
            preds["mean-CT atlas"] = atlas
        elif len(ids) > 1:  # leave-one-out: never the case itself
            preds["mean-CT atlas"] = np.mean([cache.load(c)[0] for c in ids if c != case], axis=0)
        if baseline is not None:
            preds["X2CT-style CNN"] = baseline.predict_final(v, mask)
        if template:
            from .template_fit import fit_template

            preds["template fit"] = fit_template(v, mask, preset.data, seed=seed + n).unit
        for name, cfg in variants:
            rec = pipeline.reconstruct(v, mask, steps=steps, seed=seed + n, progress=progress, consistency=cfg,
                                       fine_strength=fine_strength)
            for cut, label in (("coarse", "stage I"), ("fine", "stages I+II")):
                t = torch.from_numpy(rec.cuts[cut])[None, None]
                preds[f"{name}, {label}"] = to_final_grid(t, grid.size)[0, 0].numpy()
            preds[f"{name}, stages I+II+III"] = rec.mean
        if case in train_ids:
            seen = "seen in training"
        elif synthetic_from:
            seen = f"held out (synthetic chest made from {synthetic_from})"
        else:
            seen = "held out"
        gt_drrs = render_for_residuals(gt, preset.data, residual_views(preset.data, mask))
        for method, pred in preds.items():
            m = flat_metrics(compare(pred, gt, grid))
            rows.append({"case": case, "method": method, "case_is": seen, **m,
                         **drr_residuals(pred, gt, preset.data, mask, gt_drrs)})
        finals = [k for k in preds if k.endswith("stages I+II+III")]
        save_comparison_montage(gt, {k: preds[k] for k in finals + [k for k in preds if k == "mean-CT atlas"]},
                                outputs.path(out / "montages" / f"{case}.png"))  # staged (cli.main discards on failure)
    with open(outputs.path(out / "cases.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows)
    summary["device"], summary["precision"] = str(pipeline.device), pipeline.precision.to_dict()
    summary.update({"split": split, "cases": len(ids), "views": views, "lateral": lateral,
                    "weights": str(weights), "preset": preset.name, "case_is": sorted({r["case_is"] for r in rows}),
                    "cases_seen_in_training": sorted(set(ids) & train_ids),
                    "consistency_strength": consistency_strength, "atlas": atlas_source,
                    "fine_strength": fine_strength if fine_strength is not None else preset.prior.start_strength,
                    "oblique_view_deg": OBLIQUE_ANGLE_DEG})
    with outputs:
        outputs.path(out / "summary.json").write_text(json.dumps(summary, indent=2))
        outputs.path(out / "summary.md").write_text(summary_table(summary))
    return summary


def training_atlas(cache, ids: list[str], trained_on: dict, data, max_cases: int = 64):
    """The mean-CT atlas from the cases that trained the weights (their cache, when it is on this
    machine), else None: the caller then uses the other cases of the split (leave-one-out). Never
    includes an evaluated case, so the atlas row is a held-out number too."""
    from .datasets import CTCache

    source = trained_on.get("cache")
    if source and Path(source).is_dir():
        try:
            train_cache = CTCache(source, expected=data)
        except AxonInputError:
            train_cache = None
        if train_cache is not None:
            train_ids = [c for c in (train_cache.case_ids("train") or train_cache.case_ids("all")) if c not in ids]
            if train_ids:
                pick = train_ids[:: max(1, len(train_ids) // max_cases)][:max_cases]
                atlas = np.mean([train_cache.load(c)[0] for c in pick], axis=0)
                return atlas, f"mean of {len(pick)} training cubes from {source}"
    same = [c for c in (cache.case_ids("train") or []) if c not in ids]
    if same:
        return np.mean([cache.load(c)[0] for c in same[:max_cases]], axis=0), \
            f"mean of {len(same[:max_cases])} train-split cubes of {cache.root}"
    return None, "leave-one-out mean of the other evaluated cases"


def summarise(rows: list[dict]) -> dict:
    methods = {}
    for r in rows:
        methods.setdefault(r["method"], []).append(r)
    table = {}
    for name, rs in methods.items():
        table[name] = {}
        for key in SUMMARY_KEYS:
            vals = np.array([r[key] for r in rs if r.get(key) is not None], dtype=np.float64)
            if vals.size:
                table[name][key] = {"mean": float(vals.mean()), "std": float(vals.std())}
    return {"methods": table}


SUMMARY_KEYS = ("psnr", "ssim", "psnr_x2ct", "ssim_x2ct", "mae_hu", "input_residual", "oblique_residual")


def summary_table(summary: dict) -> str:
    """The ablation as a Markdown table (mean +- std over cases), for README and reports."""
    head = ("| method | PSNR dB | SSIM | PSNR dB (X2CT conv.) | SSIM (X2CT conv.) | MAE HU | "
            "input-view residual | oblique residual |")
    lines = [f"Cases: {summary.get('cases')} ({', '.join(summary.get('case_is', []))}), split "
             f"{summary.get('split')!r}, views {summary.get('views')}, lateral {summary.get('lateral')}.", "",
             head, "|" + "---|" * 8]
    fmt = {"psnr": "{:.2f}", "ssim": "{:.3f}", "psnr_x2ct": "{:.2f}", "ssim_x2ct": "{:.3f}", "mae_hu": "{:.0f}",
           "input_residual": "{:.3f}", "oblique_residual": "{:.3f}"}
    for name, m in summary["methods"].items():
        cells = []
        for key in SUMMARY_KEYS:
            if key in m:
                cells.append((fmt[key] + " ± " + fmt[key]).format(m[key]["mean"], m[key]["std"]))
            else:
                cells.append("n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _load_baseline(weights, preset, device):
    from .checkpoint import stage_paths

    if not stage_paths(weights, "baseline")[0].exists():
        return None
    from .training import load_trained_stage

    return load_trained_stage("baseline", weights, preset, device)
