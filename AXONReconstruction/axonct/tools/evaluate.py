"""`axon evaluate --data`: every case of a cache split, as an ablation table.

The per-case metrics are `compare`'s; this module runs the pipeline, the baselines and the
atlas over a split, and writes cases.csv, summary.json/.md and montages.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from axonct.errors import AxonInputError
from axonct.io.output_policy import Outputs
from axonct.tools.compare import (
    OBLIQUE_ANGLE_DEG,
    compare,
    drr_residuals,
    evaluate_files,  # noqa: F401  (`axon evaluate --pred --gt`: the one-case mode of the same command)
    flat_metrics,
    render_for_residuals,
    residual_views,
    save_comparison_montage,
)


@dataclasses.dataclass
class _SplitRun:
    """One evaluation of a split: the loaded pipeline and comparison methods, the cases and how
    their inputs are made (what `evaluate_cache` sets up once and runs per case)."""

    pipeline: object  # AxonPipeline
    cache: object  # CTCache
    ids: list[str]
    maker: object  # BatchMaker of the evaluated cases
    atlas: np.ndarray | None
    baseline: object | None  # the X2CT-style CNN, if trained
    variants: list  # (name, ReconstructOptions)
    lateral: bool
    template: bool
    seed: int
    progress: object

    def predictions(self, n: int, case: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """(ground truth, view mask, method -> volume on the final grid) of the ``n``-th case."""
        from axonct.pipeline.framing import model_view_radiographs
        from axonct.pipeline.reconstruction import to_final_grid

        preset = self.pipeline.preset
        gen = torch.Generator().manual_seed(self.seed + n)
        item = self.maker.sample(case, gen)
        gt = self.cache.load(case)[0].astype(np.float32)
        v = item["views"].numpy()
        mask = np.array([1.0, 1.0 if self.lateral else 0.0], np.float32)
        preds = {}
        if self.atlas is not None:
            preds["mean-CT atlas"] = self.atlas
        elif len(self.ids) > 1:  # leave-one-out: never the case itself
            preds["mean-CT atlas"] = np.mean([self.cache.load(c)[0] for c in self.ids if c != case], axis=0)
        if self.baseline is not None:
            preds["X2CT-style CNN"] = self.baseline.predict_final(v, mask)
        if self.template:
            from axonct.guidance.template_fit import fit_template

            preds["template fit"] = fit_template(v, mask, preset.data, seed=self.seed + n).unit
        frontal, lateral_view = model_view_radiographs(v, mask, preset.data)
        for name, options in self.variants:
            rec = self.pipeline(frontal, lateral_view, dataclasses.replace(options, seed=self.seed + n),
                                progress=self.progress).reconstruction
            for cut, label in (("coarse", "stage I"), ("fine", "stages I+II")):
                t = torch.from_numpy(rec.cuts[cut])[None, None]
                preds[f"{name}, {label}"] = to_final_grid(t, preset.data.grid.size)[0, 0].numpy()
            preds[f"{name}, stages I+II+III"] = rec.mean
        return gt, mask, preds


def _variants(steps, fine_strength, consistency_strength: float, ablation: bool) -> list:
    """(name, options) of the pipeline runs: what `axon reconstruct` runs, and with ``ablation``
    also without reprojection consistency."""
    from axonct.options import ReconstructOptions

    default = ReconstructOptions(steps=steps, fine_strength=fine_strength,  # what `axon reconstruct` runs
                                 consistency_strength=consistency_strength, consistency=consistency_strength > 0)
    variants = [("AXON + consistency" if default.consistency else "AXON", default)]
    if ablation:
        variants = [("AXON (no consistency)", dataclasses.replace(default, consistency=False))] + \
                   ([("AXON + consistency", default)] if default.consistency else [])
    return variants


def _case_rows(case: str, seen: str, gt: np.ndarray, mask: np.ndarray, preds: dict, data) -> list[dict]:
    """One row per method: the volume metrics and the DRR residuals on the input and oblique views."""
    gt_drrs = render_for_residuals(gt, data, residual_views(data, mask))
    return [{"case": case, "method": method, "case_is": seen, **flat_metrics(compare(pred, gt, data.grid)),
             **drr_residuals(pred, gt, data, mask, gt_drrs)} for method, pred in preds.items()]


def evaluate_cache(data: str | Path, split: str, weights: str | Path, out: str | Path, steps: int | None = None,
                   seed: int = 0, views: str = "realistic", device: str = "cpu", lateral: bool = True,
                   progress=None, consistency_strength: float = 1.0, ablation: bool = True,
                   template: bool = True, max_cases: int | None = None, fine_strength: float | None = None,
                   precision: str = "auto", overwrite: bool = False) -> dict:
    """Every case of a split, as an ablation on the final grid: the mean-CT atlas, the X2CT-style CNN
    (if trained), the template fit alone, and the pipeline without and with reprojection consistency,
    each cut after every stage. Columns: PSNR/SSIM in both conventions, MAE, and the DRR residuals
    on the input views and on a held-out oblique view. Writes cases.csv, summary.json and montages."""
    from axonct.data.datasets import Augmentation, BatchMaker, CTCache
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.physics.xray_realism import RealismConfig

    from axonct.runtime import resolve_device

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
    out = Path(out)
    outputs = Outputs("evaluate", overwrite=overwrite)  # checked before any compute, committed together
    outputs.folder(out)
    for name in ["cases.csv", "summary.json", "summary.md"] + [f"montages/{case}.png" for case in ids]:
        outputs.file(out / name)
    outputs.check(len(ids) * (2 << 20) + (1 << 20))
    run = _SplitRun(pipeline, cache, ids, maker, atlas, baseline,
                    _variants(steps, fine_strength, consistency_strength, ablation), lateral, template, seed, progress)
    rows = []
    for n, case in enumerate(ids):
        gt, mask, preds = run.predictions(n, case)
        if case in train_ids:
            seen = "seen in training"
        elif synthetic_from:
            seen = f"held out (synthetic chest made from {synthetic_from})"
        else:
            seen = "held out"
        rows += _case_rows(case, seen, gt, mask, preds, preset.data)
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
                    "fine_strength": fine_strength if fine_strength is not None else pipeline.sampling.fine_strength,
                    "oblique_view_deg": OBLIQUE_ANGLE_DEG})
    with outputs:
        outputs.path(out / "summary.json").write_text(json.dumps(summary, indent=2))
        outputs.path(out / "summary.md").write_text(summary_table(summary))
    return summary


def training_atlas(cache, ids: list[str], trained_on: dict, data, max_cases: int = 64):
    """The mean-CT atlas from the cases that trained the weights (their cache, when it is on this
    machine), else None: the caller then uses the other cases of the split (leave-one-out). Never
    includes an evaluated case, so the atlas row is a held-out number too."""
    from axonct.data.datasets import CTCache

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
    from axonct.pipeline.checkpoint import stage_paths

    if not stage_paths(weights, "baseline")[0].exists():
        return None
    from axonct.pipeline.loading import load_trained_stage

    return load_trained_stage("baseline", weights, preset, device)
