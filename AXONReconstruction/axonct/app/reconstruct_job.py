"""`axon reconstruct`: the job the CLI and the Slicer module's background process run.

Contract with a follower process (`axonct.app.protocol`, run by `axonct.app.worker`): JSON event
lines on stdout (a plan once the weights are loaded, progress, messages, then a result with the files,
the reprojection consistency and the report's warnings, or an error) and the protocol's exit codes:
`EXIT_OK`, `EXIT_INPUT` (bad input), `EXIT_OOM`, `EXIT_SIGINT`/`EXIT_SIGTERM` (cancelled),
`EXIT_INTERNAL` (a bug, with its traceback on stderr). Outputs appear only when complete: nothing is
written until every stage has finished, and each file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from axonct.errors import AxonInputError
from axonct.options import ReconstructOptions
from axonct.io.output_policy import Outputs
from axonct.pipeline.loading import default_weights_dir
from axonct.pipeline.reconstruction import AxonPipeline, ReconstructionOutput, is_out_of_memory
from axonct.app.protocol import Cancelled, ProgressLines
from axonct.app.worker import run_for_follower
from axonct.guidance.reprojection import consistency_report
from axonct.io.volume_export import output_format, plan_volume, report_name, sibling, write_volume


@dataclass
class ReconstructRequest:
    """One job: the inputs, where it writes, and the user's `ReconstructOptions`."""

    frontal: str
    out: str
    lateral: str | None = None
    weights: str | None = None
    options: ReconstructOptions = field(default_factory=ReconstructOptions)
    oom_fallback: bool = False
    overwrite: bool = False  # replace the outputs of an earlier AXON run at the same names


def run_reconstruction(req: ReconstructRequest, progress: ProgressLines) -> dict:
    from axonct.runtime import resolve_device

    out = Path(req.out)
    output_format(out)  # refuse an unsupported output name before any work
    opts = req.options.validate()
    weights = Path(req.weights) if req.weights else default_weights_dir()
    device = resolve_device(opts.device)
    progress.message(f"loading weights from {weights} on {device}")
    pipeline = AxonPipeline.load(weights, device, precision=opts.precision)
    progress.message(f"precision {pipeline.precision}")
    outputs = plan_outputs(req, pipeline.preset)  # conflicts, writability, free space: before any compute
    t0 = time.time()
    emit_plan(req, pipeline, progress)
    try:
        result = pipeline(req.frontal, req.lateral, opts, progress=progress, message=progress.message)
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
        pipeline = AxonPipeline.load(weights, "cpu", precision=opts.precision)
        progress.message(f"precision {pipeline.precision}")
        emit_plan(req, pipeline, progress)  # the run starts again, on the CPU
        result = pipeline(req.frontal, req.lateral, opts, progress=progress, message=progress.message)
    progress.check_cancelled()  # a signal after the last sampling step still cancels
    return write_outputs(result, req, weights, pipeline, time.time() - t0, outputs,
                         before_commit=progress.check_cancelled)


def emit_plan(req: ReconstructRequest, pipeline: AxonPipeline, progress: ProgressLines) -> dict:
    samples = req.options.samples
    return progress.plan(pipeline.run_plan(req.options), samples=samples,
                         batch=pipeline._sample_batch(samples, None))


def output_files(req: ReconstructRequest) -> dict:
    """Where a run writes: the volume, the std (with --samples > 1) and the report, all named from the
    whole --out name (`scan.v2.nrrd` -> `scan.v2_std.nrrd`, `scan.v2_report.json`)."""
    out = Path(req.out)
    files = {"volume": str(out)}
    if req.options.samples > 1:
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


def write_outputs(result: ReconstructionOutput, req: ReconstructRequest, weights: Path, pipeline: AxonPipeline,
                  seconds: float, outputs: Outputs | None = None, before_commit=None) -> dict:
    """All outputs or none: staged under temporary names and renamed together; an older file at any of
    the names (replaced only with --overwrite) survives every failure of this step. ``before_commit()``
    runs when everything is staged, just before the renames (the cancel check: raising discards all)."""
    rec = result.reconstruction
    volume = result.image()
    files = output_files(req)
    if outputs is None:
        outputs = plan_outputs(req, rec.preset)
    report = _report(result, req, weights, pipeline, seconds, volume, files)
    with outputs:
        write_volume(volume, files["volume"], outputs=outputs)
        if "std" in files:
            write_volume(result.std_image(), files["std"], "AXON voxel-wise standard deviation", outputs)
        outputs.path(files["report"]).write_text(json.dumps(report, indent=2))
        if before_commit is not None:
            before_commit()
    return report


def _report(result: ReconstructionOutput, req, weights, pipeline, seconds, volume, files) -> dict:
    from axonct.io.ct_preprocess import unit_to_hu

    rec = result.reconstruction
    grid = rec.output_grid
    return {
        "inputs": {"frontal": req.frontal, "lateral": req.lateral},
        "weights": str(weights),
        "weights_trained_on": {k: pipeline.cards["coarse"].get("trained_on", {}).get(k)
                               for k in ("cases", "steps_done")},
        "preset": rec.preset.name,
        "options": req.options.to_dict(),
        "samples": req.options.samples, "seed": req.options.seed, "steps": req.options.steps,
        "start": req.options.start,
        "sampling_defaults": pipeline.sampling.to_dict(),
        "device": str(pipeline.device), "precision": pipeline.precision.to_dict(),
        "sample_batch": getattr(pipeline, "last_batch", 1),
        "consistency": rec.consistency if req.options.consistency else "off",
        "grid": {"size": grid.size, "fov_mm": grid.fov_mm, "spacing_mm": grid.spacing_mm,
                 "origin_lps_mm": list(volume.GetOrigin()), "direction": "identity (LPS)"},
        "reprojection_consistency": consistency_report(rec.mean, rec.preset.data.grid, rec.preset.data, rec.views,
                                                       rec.view_mask),
        "seconds": {**{k: round(v, 2) for k, v in rec.seconds.items()}, "total": round(seconds, 2)},
        "mean_hu": float(unit_to_hu(rec.mean, rec.preset.data.grid).mean()),
        "files": files,
        **result.checks,
        "note": "research use only; not for diagnosis",
    }


def main_reconstruct(req: ReconstructRequest | Callable[[], ReconstructRequest]) -> int:
    """The job under the protocol: SIGINT/SIGTERM stop it at the next step and nothing is written. A
    callable request is built inside, so a refused option (a bad `--options` document) is an error
    event like any other."""
    def work(progress: ProgressLines) -> dict:
        report = run_reconstruction(req() if callable(req) else req, progress)
        return {"files": report["files"], "warnings": report.get("warnings", []),
                "reprojection_consistency": report["reprojection_consistency"]}

    return run_for_follower("reconstruct", work)
