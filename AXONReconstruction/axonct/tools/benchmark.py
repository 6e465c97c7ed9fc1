"""`axon benchmark`: wall time and peak memory, printed as a table and saved as JSON.

Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from axonct.atomic import write_text
from axonct.config import ProjectionGeometry, VolumeGrid
from axonct.errors import AxonInputError
from axonct.runtime import cpu_identity, resolve_device, resolve_precision

DRR_GOAL_SECONDS = {"cpu": 2.0, "cuda": 0.05}  # a biplanar pair at 256^2
FP32_PROJECTOR = {"name": "fp32", "requested": "fp32",
                  "reason": "projectors always run in float32 (line integrals lose too much in bf16)"}


def machine_info() -> dict:
    """The machine a benchmark ran on (CPU model and ATen capability as the precision probe sees them)."""
    ident = cpu_identity()
    info = {"cpu": ident["cpu"], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "aten_capability": ident["capability"]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (None where the platform has no `resource` module)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, device: torch.device, repeats: int) -> list[float]:
    fn()  # warm-up (also fills the geometry cache)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def _benchmark_ct(size: int, device: torch.device) -> torch.Tensor:
    """The real sample CT on a size^3 grid when available (timing does not depend on content)."""
    try:
        from axonct.io.ct import read_ct
        from axonct.io.ct_preprocess import ct_to_model
        from axonct.io.sample_data import sample_ct_path

        mv = ct_to_model(read_ct(sample_ct_path()), VolumeGrid(size=size))
        return torch.from_numpy(mv.array).to(device)
    except Exception:
        return torch.rand((size,) * 3, generator=torch.Generator().manual_seed(0)).to(device)


def benchmark_drr(sizes=(128, 256), device: str = "auto", repeats: int = 5) -> dict:
    from axonct.physics.drr import drr_from_unit_volume

    dev = resolve_device(device)
    rows = []
    for n in sizes:
        grid = VolumeGrid(size=n)
        geom = ProjectionGeometry(detector_pixels=n)
        cube = _benchmark_ct(n, dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def run():
            with torch.no_grad():
                drr_from_unit_volume(cube, grid, geom)

        times = _time(run, dev, repeats)
        samples = 2 * n * n * n  # bilinear samples for a pair (one per plane per ray)
        rows.append({
            "ct": f"{n}^3", "views": f"2 x {n}^2", "device": str(dev),
            "median_s": statistics.median(times), "min_s": min(times),
            "bilinear_samples": samples,
            "peak_rss_mb": None if peak_rss_mb() is None else round(peak_rss_mb(), 1),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev.type == "cuda" else None,
        })
    goal = DRR_GOAL_SECONDS["cuda" if dev.type == "cuda" else "cpu"]
    return {"benchmark": "drr", "machine": machine_info(), "goal_pair_256_s": goal, "rows": rows,
            "precision": FP32_PROJECTOR}


def print_table(result: dict) -> None:
    rows = result["rows"]
    if not rows:
        return
    keys = list(rows[0].keys())
    widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(widths[k]) for k in keys))
    print(f"machine: {result['machine']}")
    if result.get("precision"):
        prec = result["precision"]
        print(f"precision: {prec['name']} ({prec['reason']})")


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def save_result(result: dict, path: str | Path) -> None:
    write_text(path, json.dumps(result, indent=2))


# ----------------------------------------------------------------------------- whole pipeline
H100_BF16_DENSE_TFLOPS = 989.0
ASSUMED_UTILISATION = 0.3  # typical of 3D convolutions at these sizes; the projection states it


class PeakRSS:
    """Samples this process's resident memory every 20 ms while a stage runs."""

    def __init__(self):
        import threading

        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> int:
        try:
            import mmap

            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * mmap.PAGESIZE
        except OSError:
            return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            self._stop.wait(0.02)

    def __enter__(self):
        self.peak = self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def stage_flops(pipe, n: int) -> dict[str, int]:
    """FLOPs of one network call per stage, counted on meta-device copies (no compute, any preset)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, n, n, n, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    calls = {"coarse": lambda m: m.predict(x, x, t), "fine": lambda m: m(x, t, x), "sr": lambda m: m(x)}
    out = {}
    for name, module in (("coarse", pipe.coarse), ("fine", pipe.fine), ("sr", pipe.sr)):
        meta = copy.deepcopy(module).to("meta")
        with FlopCounterMode(display=False) as counter:
            calls[name](meta)
        out[name] = int(counter.get_total_flops())
    return out


def _pipeline_row(stage, steps, seconds, rss_mb, cuda_mb, flops) -> dict:
    return {"stage": stage, "steps": steps, "seconds": seconds, "peak_rss_mb": rss_mb, "peak_cuda_mb": cuda_mb,
            "gflop": round(flops / 1e9, 1),
            "projected_h100_s": round(flops / (H100_BF16_DENSE_TFLOPS * 1e12 * ASSUMED_UTILISATION), 3)}


def benchmark_pipeline(config: str = "cpu", weights: str | None = None, steps: int | None = None,
                       device: str = "auto", samples: int = 1, projection_only: bool = False,
                       precision: str = "auto", batch_size: int | None = None) -> dict:
    """Wall time, peak memory and FLOPs of each stage for one reconstruction of ``samples`` samples.

    The samples run as the pipeline runs them (one batch on a GPU, one at a time on a CPU), each
    stage feeding the next at its own grid. A one-step warm-up of every stage (kernel selection,
    cuDNN autotuning, allocator growth) runs before the timed region."""
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.presets import load_preset
    from axonct.models.sr import upsample_tiled

    preset = None
    if not weights:
        try:
            preset = load_preset(config)
        except (FileNotFoundError, ValueError) as exc:
            raise AxonInputError(None, f"--config: {exc}") from None
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    pipe = AxonPipeline.load(weights, dev, precision=prec) if weights else \
        AxonPipeline.untrained(preset, dev, precision=prec)
    p = pipe.preset
    n, views_px = p.diffusion_grid.size, p.data.geometry.detector_pixels
    c_steps, f_steps = steps or pipe.sampling.coarse_steps, steps or pipe.sampling.fine_steps
    batch = pipe._sample_batch(samples, batch_size)
    views = torch.rand(1, 2, views_px, views_px, generator=torch.Generator().manual_seed(0)).to(dev)
    mask = torch.ones(1, 2, device=dev)

    def run_stage(name: str, x, k: int, num_steps: int):
        """Stage ``name`` for samples k..k+b-1 (b = x's batch, or ``batch`` for Stage I)."""
        b = x.shape[0] if x is not None else min(batch, samples - k)
        gens = [torch.Generator().manual_seed(1000 + k + j) for j in range(b)]
        gen = gens[0] if b == 1 else gens
        if name == "coarse":
            return pipe.coarse.sample(views.expand(b, -1, -1, -1), mask.expand(b, -1), num_steps=num_steps,
                                      generator=gen).float()
        if name == "fine":
            return pipe.fine.sample(x, gen, num_steps=num_steps, start_strength=pipe.sampling.fine_strength).float()
        return upsample_tiled(pipe.sr, x).float()

    flops_per_call = stage_flops(pipe, n)
    steps_of = {"coarse": c_steps, "fine": f_steps, "sr": 1}
    cuda = dev.type == "cuda"
    rows = []
    with torch.no_grad(), pipe._autocast():
        if not projection_only:  # warm-up, untimed: one step of each stage on one batch
            x = None
            for name in ("coarse", "fine", "sr"):
                x = run_stage(name, x, 0, 1)
            del x
            if cuda:
                torch.cuda.synchronize(dev)
        chunks = [None] * len(range(0, samples, batch))  # each batch's output of the previous stage
        for name in ("coarse", "fine", "sr"):
            seconds = rss_mb = cuda_mb = None
            if not projection_only:
                if cuda:
                    torch.cuda.synchronize(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
                with PeakRSS() as rss:
                    t = time.perf_counter()
                    for c, k in enumerate(range(0, samples, batch)):
                        chunks[c] = run_stage(name, chunks[c], k, steps_of[name])
                    if cuda:
                        torch.cuda.synchronize(dev)
                    seconds = round(time.perf_counter() - t, 3)
                rss_mb = round(rss.peak / 2**20, 1)
                cuda_mb = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if cuda else None
            rows.append(_pipeline_row(name, steps_of[name], seconds, rss_mb, cuda_mb,
                                      flops_per_call[name] * steps_of[name] * samples))
        out_shape = list(chunks[0].shape) if chunks and chunks[0] is not None else None
    total_flops = sum(r["gflop"] for r in rows) * 1e9
    measured = [r for r in rows if r["seconds"] is not None]
    rows.append(_pipeline_row(
        "total", None, round(sum(r["seconds"] for r in measured), 3) if measured else None,
        max(r["peak_rss_mb"] for r in measured) if measured else None,
        max(r["peak_cuda_mb"] for r in measured) if measured and cuda else None, total_flops))
    return {"benchmark": "pipeline", "preset": p.name, "weights": weights or "untrained (same cost)",
            "device": str(dev), "precision": prec.to_dict(), "samples": samples, "sample_batch": batch,
            "output_shape": out_shape, "machine": machine_info(), "rows": rows,
            "goals": {"cpu_128": "<= 600 s on 2 cores", "h200_256": "<= 5 s at <= 24 GB"},
            "projection": f"GPU seconds = counted FLOPs / ({H100_BF16_DENSE_TFLOPS:g} TFLOP/s bf16 dense x "
                          f"{ASSUMED_UTILISATION:g} utilisation); a projection, not a measurement"}


# ----------------------------------------------------------------------------- sparse projector
def benchmark_projector(cases=((64, 64), (64, 128)), repeats: int = 10, cache_dir: str | Path | None = None,
                        angles=(0.0, 90.0)) -> dict:
    """Sparse projector vs `drr.project` per (grid size, detector pixels) case, biplanar by default.

    Reports build time, cached-load time, sparse forward/adjoint median ms (one volume), the
    `drr.project` forward and autograd-backward median ms on the same sizes, nnz and memory.
    ``cache_dir`` None uses a temporary folder so the user's cache is neither read nor filled.
    The defaults are the tiny preset (64^3, 64^2 views) and the cpu preset's 64^3 diffusion grid
    with its 128^2 views. Returns a dict with ``rows`` (for `print_table`) and a ``summary`` string.
    """
    import tempfile

    from axonct.physics.drr import project, unit_to_attenuation
    from axonct.physics.geometry import view_at_angle
    from axonct.physics.sparse_projector import SparseProjector

    rows = []
    with tempfile.TemporaryDirectory(prefix="axon-projector-bench-") as tmp:
        folder = Path(cache_dir) if cache_dir is not None else Path(tmp)
        for size, pixels in cases:
            grid = VolumeGrid(size=int(size))
            geom = ProjectionGeometry(detector_pixels=int(pixels))
            views = [view_at_angle(a, geom) for a in angles]
            x = unit_to_attenuation(_benchmark_ct(grid.size, torch.device("cpu")), grid)[None].float()

            t = time.perf_counter()
            proj = SparseProjector.build(grid, views)
            build_s = time.perf_counter() - t
            SparseProjector.cached(grid, views, cache_dir=folder)  # make sure the file exists
            t = time.perf_counter()
            SparseProjector.cached(grid, views, cache_dir=folder)
            load_s = time.perf_counter() - t

            y = proj.forward(x)
            fwd = _time(lambda: proj.forward(x), torch.device("cpu"), repeats)
            adj = _time(lambda: proj.adjoint(y), torch.device("cpu"), repeats)

            def drr_fwd():
                with torch.no_grad():
                    return [project(x, grid, v) for v in views]

            xg = x.clone().requires_grad_(True)
            loss = sum((project(xg, grid, v) * y[:, i]).sum() for i, v in enumerate(views))
            dfwd = _time(drr_fwd, torch.device("cpu"), repeats)
            dbwd = _time(lambda: torch.autograd.grad(loss, xg, retain_graph=True), torch.device("cpu"), repeats)
            ms = lambda ts: round(1000 * statistics.median(ts), 2)  # noqa: E731
            rows.append({
                "grid": f"{grid.size}^3", "views": f"{len(views)} x {pixels}^2",
                "build_s": round(build_s, 3), "cached_load_s": round(load_s, 3),
                "sparse_fwd_ms": ms(fwd), "sparse_adj_ms": ms(adj),
                "drr_fwd_ms": ms(dfwd), "drr_autograd_bwd_ms": ms(dbwd),
                "nnz": proj.nnz, "memory_mb": round(proj.memory_bytes / 2**20, 1),
                "cache_file_mb": round(SparseProjector.cache_path(grid, views, folder).stat().st_size / 2**20, 1),
            })
    lines = [f"sparse projector (A and A^T in CSR, one volume, {torch.get_num_threads()} thread(s)):"]
    for r in rows:
        lines.append(
            f"  {r['grid']} with {r['views']}: forward {r['sparse_fwd_ms']} ms, adjoint {r['sparse_adj_ms']} ms "
            f"(drr.project {r['drr_fwd_ms']} ms, its autograd backward {r['drr_autograd_bwd_ms']} ms); "
            f"build {r['build_s']} s, cached load {r['cached_load_s']} s; nnz {r['nnz']:,}, "
            f"{r['memory_mb']} MB in memory, {r['cache_file_mb']} MB on disk")
    return {"benchmark": "projector", "machine": machine_info(), "repeats": repeats, "rows": rows,
            "precision": FP32_PROJECTOR,
            "summary": "\n".join(lines)}


def benchmark_consistency(config: str = "cpu", weights: str | None = None, repeats: int = 5,
                          device: str = "cpu", precision: str = "auto") -> dict:
    """What reprojection consistency adds to one sampling step, per stage, at the diffusion grid.

    One step = one network evaluation (in the pipeline's precision) vs one guidance call (float32)
    (projection, residual, a correction) plus the per-view calibration, fitted once per stage and
    amortised over the stage's steps. Untrained weights cost the same as trained ones. Goal: <= 10 %.
    """
    from axonct.guidance.consistency import ConsistencyConfig, ViewConsistency
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.presets import load_preset

    dev = resolve_device(device)
    pipe = AxonPipeline.load(weights, dev, precision=precision) if weights else \
        AxonPipeline.untrained(load_preset(config), dev, precision=precision)
    preset = pipe.preset
    lo = preset.data.diffusion_grid(preset.sr.factor)
    p = preset.data.geometry.detector_pixels
    gen = torch.Generator().manual_seed(0)
    views = torch.rand((2, p, p), generator=gen).numpy()
    mask = torch.ones(2).numpy()
    x = (_benchmark_ct(lo.size, torch.device("cpu")) * 2 - 1)[None, None].to(dev)
    cfg = ConsistencyConfig()
    checker = ViewConsistency(views, mask, lo, preset.data.geometry, cfg)
    t = time.perf_counter()
    checker.calibrate(((x[:, 0] + 1) / 2).cpu())
    calib_s = time.perf_counter() - t
    bridge, cg = checker.bridge_guidance(pipe.coarse.scheduler), checker.cg_guidance()
    t_mid = int(torch.argmax(pipe.coarse.scheduler.delta))

    def guided(fn):
        def run():
            checker.calls = 1  # not due: the calibration is timed on its own and amortised below
            return fn(x.cpu(), 0, 20, t_mid)
        return run

    with torch.no_grad():
        y = pipe.coarse.encode(torch.from_numpy(views)[None].to(dev), torch.from_numpy(mask)[None].to(dev))
    tt = torch.full((1,), t_mid, dtype=torch.long, device=dev)

    def coarse_step():
        with torch.no_grad(), pipe._autocast():
            return pipe.coarse.predict(x, y, tt)

    def fine_step():
        with torch.no_grad(), pipe._autocast():
            return pipe.fine(x, tt, x)

    rows = []
    fine_steps = len(pipe.fine.schedule.inference_timesteps(
        pipe.sampling.fine_steps, pipe.fine.schedule.start_timestep(pipe.sampling.fine_strength)))
    for stage, net, guide, steps in (("coarse (bridge step)", coarse_step, guided(bridge), pipe.sampling.coarse_steps),
                                     ("fine (CG step)", fine_step, guided(cg), fine_steps)):
        net_s = statistics.median(_time(net, dev, repeats))
        guide_s = statistics.median(_time(guide, torch.device("cpu"), repeats))
        per_step = guide_s + calib_s / steps
        rows.append({"stage": stage, "grid": f"{lo.size}^3", "views": f"2 x {min(cfg.view_pixels, p)}^2",
                     "network_step_s": round(net_s, 4), "guidance_s": round(guide_s, 4),
                     "steps": steps, "calibration_s_amortised": round(calib_s / steps, 4),
                     "overhead_pct": round(100 * per_step / net_s, 1)})
    return {"benchmark": "consistency", "preset": preset.name, "machine": machine_info(), "repeats": repeats,
            "precision": pipe.precision.to_dict(),
            "calibration_s": round(calib_s, 3), "rows": rows, "goal": "overhead <= 10 % of a step at 64^3"}
