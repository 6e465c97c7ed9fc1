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
