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

from .atomic import write_text
from .errors import AxonInputError
from .pipeline import AxonPipeline, Cancelled, ProgressLines, Reconstruction
from .reprojection import consistency_report
from .volume_export import output_format, sibling, write_volume

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
    oom_fallback: bool = False
    consistency: bool = True  # steer the samplers towards agreement with the input views
    consistency_strength: float = 1.0
    start: str = "stage1"  # or "template": Stage II starts from a template fit instead of Stage I


def default_weights_dir() -> Path:
    """The demo weights shipped with the module (Resources/Weights/cpu)."""
    return Path(__file__).resolve().parent.parent / "Resources" / "Weights" / "cpu"


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


class _Signals:
    """Turns SIGINT/SIGTERM into a flag the progress callback checks between steps."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in EXIT_SIGNAL:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_reconstruction(req: ReconstructRequest, progress: ProgressLines) -> dict:
    from .benchmark import resolve_device

    out = Path(req.out)
    output_format(out)  # refuse an unsupported output name before any work
    if req.samples < 1:
        raise AxonInputError(None, "--samples must be at least 1")
    weights = Path(req.weights) if req.weights else default_weights_dir()
    device = resolve_device(req.device)
    progress.message(f"loading weights from {weights} on {device}")
    pipeline = AxonPipeline.load(weights, device)
    views, mask = pipeline.model_views(req.frontal, req.lateral)
    t0 = time.time()
    options = _sampling_options(req, pipeline, views, mask, progress)
    try:
        rec = pipeline.reconstruct(views, mask, steps=req.steps, samples=req.samples, seed=req.seed,
                                   progress=progress, **options)
    except Cancelled:
        raise
    except Exception as exc:
        if not _is_oom(exc):
            raise
        if not (req.oom_fallback and device.type == "cuda"):
            raise MemoryError(f"out of memory on {device} during reconstruction; try --samples 1, "
                              f"--device cpu, or --oom-fallback") from exc
        import torch

        torch.cuda.empty_cache()
        progress.message("out of GPU memory: falling back to the CPU (slower)")
        pipeline = AxonPipeline.load(weights, "cpu")
        rec = pipeline.reconstruct(views, mask, steps=req.steps, samples=req.samples, seed=req.seed,
                                   progress=progress, **options)
    return write_outputs(rec, req, weights, pipeline, time.time() - t0)


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


def write_outputs(rec: Reconstruction, req: ReconstructRequest, weights: Path, pipeline: AxonPipeline,
                  seconds: float) -> dict:
    import SimpleITK as sitk

    out = Path(req.out)
    grid = rec.preset.data.grid
    volume = rec.volume().to_hu_image()
    report_path = sibling(out, "report")
    report_path = report_path.with_name(report_path.name.split(".")[0] + ".json")
    files = {"volume": str(out)}
    if rec.std is not None:
        files["std"] = str(sibling(out, "std"))
    files["report"] = str(report_path)
    written: list[Path] = []  # only what this run wrote is removed on failure
    try:
        report = _report(rec, req, weights, pipeline, seconds, volume, files)
        written.append(write_volume(volume, out))
        if rec.std is not None:
            std_img = sitk.GetImageFromArray((rec.std * (grid.hu_max - grid.hu_min)).astype(np.float32))
            std_img.CopyInformation(volume)  # the spread in HU, on the same grid
            written.append(write_volume(std_img, files["std"], "AXON voxel-wise standard deviation"))
        write_text(report_path, json.dumps(report, indent=2))
    except BaseException:
        _remove(written)  # all outputs or none
        raise
    return report


def _remove(paths) -> None:
    import shutil

    for p in map(Path, paths):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


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
