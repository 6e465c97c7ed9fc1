"""`axon reconstruct`: the job the CLI and the Slicer module's background process run.

Contract with a follower process: progress lines on stdout (`pipeline.PROGRESS_PREFIX` + JSON),
errors as one readable line on stderr, exit code 0 (done), 2 (bad input), 3 (out of memory),
130/143 (cancelled by SIGINT/SIGTERM). Outputs appear only when complete: nothing is written
until every stage has finished, and each file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AxonInputError
from .output_policy import CooperativeSignals, Outputs
from .pipeline import AxonPipeline, Cancelled, ProgressLines, Reconstruction, is_out_of_memory
from .reprojection import consistency_report
from .volume_export import output_format, plan_volume, report_name, sibling, write_volume

EXIT_OK, EXIT_INPUT, EXIT_OOM = 0, 2, 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class ReconstructRequest:
    frontal: str
    out: str
    lateral: str | None = None
    weights: str | None = None
    steps: int | None = None
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | bf16 | fp32 (runtime.resolve_precision decides "auto" per machine)
    oom_fallback: bool = False
    consistency: bool = True  # steer the samplers towards agreement with the input views
    consistency_strength: float = 1.0
    start: str = "stage1"  # or "template": Stage II starts from a template fit instead of Stage I
    overwrite: bool = False  # replace the outputs of an earlier AXON run at the same names


def default_weights_dir() -> Path:
    """The demo weights shipped inside the engine package (axonct/weights/cpu): a `pip install`
    and the Slicer module find them the same way, wherever they were installed."""
    return Path(__file__).resolve().parent / "weights" / "cpu"


_Signals = CooperativeSignals  # SIGINT/SIGTERM -> a flag the progress callback checks between steps


def run_reconstruction(req: ReconstructRequest, progress: ProgressLines) -> dict:
    from .runtime import resolve_device

    out = Path(req.out)
    output_format(out)  # refuse an unsupported output name before any work
    if req.samples < 1:
        raise AxonInputError(None, "--samples must be at least 1")
    weights = Path(req.weights) if req.weights else default_weights_dir()
    device = resolve_device(req.device)
    progress.message(f"loading weights from {weights} on {device}")
    pipeline = AxonPipeline.load(weights, device, precision=req.precision)
    progress.message(f"precision {pipeline.precision}")
    outputs = plan_outputs(req, pipeline.preset)  # conflicts, writability, free space: before any compute
    views, mask = pipeline.model_views(req.frontal, req.lateral)
    t0 = time.time()
    options = _sampling_options(req, pipeline, views, mask, progress)
    try:
        rec = pipeline.reconstruct(views, mask, steps=req.steps, samples=req.samples, seed=req.seed,
                                   progress=progress, **options)
    except Cancelled:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if not (req.oom_fallback and device.type == "cuda"):
            raise MemoryError(f"out of memory on {device} during reconstruction; try --samples 1, "
                              f"--device cpu, or --oom-fallback") from exc
        import torch

        torch.cuda.empty_cache()
        progress.message("out of GPU memory: falling back to the CPU (slower)")
        pipeline = AxonPipeline.load(weights, "cpu", precision=req.precision)
        progress.message(f"precision {pipeline.precision}")
        rec = pipeline.reconstruct(views, mask, steps=req.steps, samples=req.samples, seed=req.seed,
                                   progress=progress, **options)
    return write_outputs(rec, req, weights, pipeline, time.time() - t0, outputs)


def _sampling_options(req: ReconstructRequest, pipeline: AxonPipeline, views, mask, progress) -> dict:
    """Consistency and start options of `AxonPipeline.reconstruct` from the request."""
    options: dict = {}
    if req.start not in ("stage1", "template"):
        raise AxonInputError(None, f"--start must be stage1 or template, got {req.start!r}")
    if req.consistency:
        from .consistency import ConsistencyConfig

        try:
            options["consistency"] = ConsistencyConfig(strength=req.consistency_strength)
        except ValueError as exc:
            raise AxonInputError(None, str(exc)) from exc
    if req.start == "template":
        from .template_fit import fit_template

        progress.message("fitting the template CT to the input views")
        fit = fit_template(views, mask, pipeline.preset.data, progress=progress)
        options["start"] = fit.unit
    return options


def output_files(req: ReconstructRequest) -> dict:
    """Where a run writes: the volume, the std (with --samples > 1) and the report, all named from the
    whole --out name (`scan.v2.nrrd` -> `scan.v2_std.nrrd`, `scan.v2_report.json`)."""
    out = Path(req.out)
    files = {"volume": str(out)}
    if req.samples > 1:
        files["std"] = str(sibling(out, "std"))
    files["report"] = str(report_name(out))
    return files


def plan_outputs(req: ReconstructRequest, preset) -> Outputs:
    """Check every output of the run (conflicts, writability, free space) before any compute."""
    size = preset.data.grid.size
    files = output_files(req)
    outputs = Outputs("reconstruct", overwrite=req.overwrite)
    for key in ("volume", "std"):
        if key in files:
            plan_volume(outputs, files[key], size)
    outputs.file(files["report"])
    per_volume = size**3 * (2 if output_format(req.out) == "dicom" else 4) + size * 2048
    outputs.check(per_volume * (len(files) - 1) + (1 << 20))
    return outputs


def write_outputs(rec: Reconstruction, req: ReconstructRequest, weights: Path, pipeline: AxonPipeline,
                  seconds: float, outputs: Outputs | None = None) -> dict:
    """All outputs or none: staged under temporary names and renamed together; an older file at any of
    the names (replaced only with --overwrite) survives every failure of this step."""
    import SimpleITK as sitk

    grid = rec.preset.data.grid
    volume = rec.volume().to_hu_image()
    files = output_files(req)
    if outputs is None:
        outputs = plan_outputs(req, rec.preset)
    report = _report(rec, req, weights, pipeline, seconds, volume, files)
    with outputs:
        write_volume(volume, files["volume"], outputs=outputs)
        if "std" in files:
            std = rec.std if rec.std is not None else np.zeros_like(rec.mean)
            std_img = sitk.GetImageFromArray((std * (grid.hu_max - grid.hu_min)).astype(np.float32))
            std_img.CopyInformation(volume)  # the spread in HU, on the same grid
            write_volume(std_img, files["std"], "AXON voxel-wise standard deviation", outputs)
        outputs.path(files["report"]).write_text(json.dumps(report, indent=2))
    return report


def _report(rec, req, weights, pipeline, seconds, volume, files) -> dict:
    from .ct_preprocess import unit_to_hu

    grid = rec.preset.data.grid
    return {
        "inputs": {"frontal": req.frontal, "lateral": req.lateral},
        "weights": str(weights),
        "weights_trained_on": {k: pipeline.cards["coarse"].get("trained_on", {}).get(k)
                               for k in ("cases", "steps_done")},
        "preset": rec.preset.name,
        "samples": req.samples, "seed": req.seed, "steps": req.steps, "start": req.start,
        "device": str(pipeline.device), "precision": pipeline.precision.to_dict(),
        "sample_batch": getattr(pipeline, "last_batch", 1),
        "consistency": rec.consistency if req.consistency else "off",
        "grid": {"size": grid.size, "fov_mm": grid.fov_mm, "spacing_mm": grid.spacing_mm,
                 "origin_lps_mm": list(volume.GetOrigin()), "direction": "identity (LPS)"},
        "reprojection_consistency": consistency_report(rec.mean, grid, rec.preset.data, rec.views, rec.view_mask),
        "seconds": {**{k: round(v, 2) for k, v in rec.seconds.items()}, "total": round(seconds, 2)},
        "mean_hu": float(unit_to_hu(rec.mean, grid).mean()),
        "files": files,
        "note": "research use only; not for diagnosis",
    }


def main_reconstruct(req: ReconstructRequest) -> int:
    with _Signals() as signals:
        progress = ProgressLines(human=sys.stderr.isatty(), should_stop=lambda: signals.received is not None)
        try:
            report = run_reconstruction(req, progress)
        except Cancelled:
            print("axon reconstruct: cancelled; no output was written", file=sys.stderr)
            return EXIT_SIGNAL.get(signals.received, 130)
        except AxonInputError as exc:
            print(f"axon reconstruct: error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        except MemoryError as exc:
            print(f"axon reconstruct: error: {exc}", file=sys.stderr)
            return EXIT_OOM
    progress.message("done")
    print(json.dumps({"done": True, "files": report["files"],
                      "reprojection_consistency": report["reprojection_consistency"]}))
    return EXIT_OK
