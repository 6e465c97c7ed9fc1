"""`axon benchmark`: wall time and peak memory, printed as a table and saved as JSON.

Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from .atomic import write_text
from .config import ProjectionGeometry, VolumeGrid

DRR_GOAL_SECONDS = {"cpu": 2.0, "cuda": 0.05}  # a biplanar pair at 256^2


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def machine_info() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float:
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
        from .ct_io import read_ct
        from .ct_preprocess import ct_to_model
        from .sample_data import sample_ct_path

        mv = ct_to_model(read_ct(sample_ct_path()), VolumeGrid(size=size))
        return torch.from_numpy(mv.array).to(device)
    except Exception:
        return torch.rand((size,) * 3, generator=torch.Generator().manual_seed(0)).to(device)


def benchmark_drr(sizes=(128, 256), device: str = "auto", repeats: int = 5) -> dict:
    from .drr import drr_from_unit_volume

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
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev.type == "cuda" else None,
        })
    goal = DRR_GOAL_SECONDS["cuda" if dev.type == "cuda" else "cpu"]
    return {"benchmark": "drr", "machine": machine_info(), "goal_pair_256_s": goal, "rows": rows}


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
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize()
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
                       device: str = "auto", samples: int = 1, projection_only: bool = False) -> dict:
    """Wall time, peak memory and FLOPs of each stage for one reconstruction."""
    from .pipeline import AxonPipeline
    from .presets import load_preset
    from .sr_stage import upsample_tiled

    dev = resolve_device(device)
    pipe = AxonPipeline.load(weights, dev) if weights else AxonPipeline.untrained(load_preset(config), dev)
    p = pipe.preset
    n, views_px = p.diffusion_grid.size, p.data.geometry.detector_pixels
    c_steps, f_steps = steps or p.coarse.sample_steps, steps or p.prior.sample_steps
    gen = torch.Generator().manual_seed(0)
    views = torch.rand(1, 2, views_px, views_px, generator=gen).to(dev)
    mask = torch.ones(1, 2, device=dev)
    state = {}

    def coarse():
        state["x"] = pipe.coarse.sample(views, mask, num_steps=c_steps, generator=gen).float()

    def fine():
        state["x"] = pipe.fine.sample(state["x"], gen, num_steps=f_steps).float()

    def sr():
        state["x"] = upsample_tiled(pipe.sr, state["x"]).float()

    flops_per_call = stage_flops(pipe, n)
    steps_of = {"coarse": c_steps, "fine": f_steps, "sr": 1}
    cuda = dev.type == "cuda"
    rows = []
    with torch.no_grad(), pipe._autocast():
        for name, fn in (("coarse", coarse), ("fine", fine), ("sr", sr)):
            seconds = rss_mb = cuda_mb = None
            if not projection_only:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    torch.cuda.synchronize()
                with PeakRSS() as rss:
                    t = time.perf_counter()
                    for _ in range(samples):
                        fn()
                    if cuda:
                        torch.cuda.synchronize()
                    seconds = round(time.perf_counter() - t, 3)
                rss_mb = round(rss.peak / 2**20, 1)
                cuda_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
            rows.append(_pipeline_row(name, steps_of[name], seconds, rss_mb, cuda_mb,
                                      flops_per_call[name] * steps_of[name] * samples))
    total_flops = sum(r["gflop"] for r in rows) * 1e9
    measured = [r for r in rows if r["seconds"] is not None]
    rows.append(_pipeline_row(
        "total", None, round(sum(r["seconds"] for r in measured), 3) if measured else None,
        max(r["peak_rss_mb"] for r in measured) if measured else None,
        max(r["peak_cuda_mb"] for r in measured) if measured and cuda else None, total_flops))
    return {"benchmark": "pipeline", "preset": p.name, "weights": weights or "untrained (same cost)",
            "device": str(dev), "samples": samples, "machine": machine_info(), "rows": rows,
            "goals": {"cpu_128": "<= 600 s on 2 cores", "h100_256": "<= 5 s at <= 12 GB"},
            "projection": f"GPU seconds = counted FLOPs / ({H100_BF16_DENSE_TFLOPS:g} TFLOP/s bf16 dense x "
                          f"{ASSUMED_UTILISATION:g} utilisation); a projection, not a measurement"}
