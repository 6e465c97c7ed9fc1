"""Where and in what precision the networks run: one device resolver, one precision decision.

Why a decision and not a default: bf16 autocast makes 3D convolutions 2-3x faster on CPUs with
native bf16 (AVX-512 BF16, AMX) and on most GPUs, but about 10-200x *slower* on CPUs without it
(every AVX2-only laptop or workstation), where oneDNN emulates bf16. A fixed default that is fast
on one machine hangs on another, so ``auto`` asks the hardware: CUDA reports bf16 support, and on
a CPU a tiny Conv3d is timed in both precisions (a fraction of a second; cached per machine).

Every command (inference, training, evaluation, benchmarks) resolves its precision here and
reports the choice with its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import write_text
from .errors import AxonInputError
from .options import normalise_precision

BF16_MIN_SPEEDUP = 1.3  # bf16 must beat float32 by this much on the probe to be chosen on a CPU
PROBE_VERSION = 2


class DeviceError(AxonInputError):
    """A device that does not exist or is not usable here (exit code 2, like other bad input)."""


def resolve_device(name: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda', 'cuda:1', 'cpu', 'mps' checked for existence."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(None, f"{option} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(None, f"{option} {name} was asked for but torch sees no CUDA device here "
                                    f"(torch {torch.__version__}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(None, f"{option} {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(None, f"{option} mps was asked for but this machine has no MPS device")
    elif dev.type != "cpu":
        raise DeviceError(None, f"{option} {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


@dataclass(frozen=True)
class Precision:
    """The compute precision a run uses, and why (reports and progress print both)."""

    name: str  # "bf16" or "fp32"
    reason: str
    requested: str = "auto"

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def autocast(self, device: torch.device | str):
        """bf16 autocast on ``device`` for "bf16"; a no-op context for "fp32"."""
        device = torch.device(device)
        if self.name == "bf16" and device.type in ("cpu", "cuda"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_dict(self) -> dict:
        return {"name": self.name, "requested": self.requested, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def resolve_precision(requested: str | None, device: torch.device | str, probe_cache: Path | None = None,
                      use_cache: bool = True) -> Precision:
    """The precision to compute in on ``device``; ``auto`` is bf16 only where bf16 is fast."""
    req = normalise_precision(requested)
    dev = torch.device(device)
    if req == "fp32":
        return Precision("fp32", "asked for (--precision fp32)", req)
    if dev.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        if req == "bf16":
            if not supported:
                raise AxonInputError(None, f"--precision bf16: {torch.cuda.get_device_name(dev)} has no bf16 support")
            return Precision("bf16", "asked for (--precision bf16)", req)
        name = torch.cuda.get_device_name(dev)
        if supported:
            return Precision("bf16", f"auto: {name} supports bf16 (tensor cores)", req)
        return Precision("fp32", f"auto: {name} has no bf16 support", req)
    if dev.type != "cpu":
        if req == "bf16":
            raise AxonInputError(None, f"--precision bf16 is supported on CPU and CUDA devices, not {dev.type}")
        return Precision("fp32", f"auto: float32 on {dev.type}", req)
    if req == "bf16":
        return Precision("bf16", "asked for (--precision bf16); on CPUs without native bf16 this is "
                                 "10-200x slower than fp32", req)
    probe = cpu_bf16_probe(probe_cache, use_cache=use_cache)
    speedup = probe["fp32_s"] / max(probe["bf16_s"], 1e-9)
    where = f"{probe['cpu']}, ATen {probe['capability']}"
    cached = ", cached" if probe.get("from_cache") else ""
    if speedup >= BF16_MIN_SPEEDUP:
        return Precision("bf16", f"auto: bf16 measured {speedup:.1f}x faster than fp32 on this CPU "
                                 f"({where}{cached})", req)
    return Precision("fp32", f"auto: bf16 measured {1 / max(speedup, 1e-9):.1f}x slower than fp32 on this CPU "
                             f"({where}{cached})" if speedup < 1 else
                     f"auto: bf16 only {speedup:.1f}x faster than fp32 on this CPU ({where}{cached})", req)


# ----------------------------------------------------------------------------- the CPU probe
def cpu_identity() -> dict:
    """What the probe's answer depends on: the CPU, its flags, torch, and the ISA caps in the env."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": model,
        "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "env": {k: os.environ.get(k, "") for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")},
        "version": PROBE_VERSION,
    }


def default_probe_cache() -> Path:
    base = os.environ.get("AXON_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) / ("" if os.environ.get("AXON_CACHE_DIR") else "axonct") if base else \
        Path.home() / ".cache" / "axonct"
    return root / "precision_probe.json"


def _time_conv(conv: torch.nn.Module, x: torch.Tensor, bf16: bool, repeats: int = 3) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    best = float("inf")
    with torch.no_grad(), ctx:
        conv(x)  # warm-up: oneDNN picks and compiles its kernel
        for _ in range(repeats):
            t = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t)
    return best


def _interleaved(conv: torch.nn.Module, x: torch.Tensor, rounds: int = 4) -> tuple[float, float]:
    """Best fp32 and bf16 times, measured in alternation so that a busy machine (other jobs on
    the same cores) slows both alike instead of one of them."""
    fp32 = bf16 = float("inf")
    for _ in range(rounds):
        fp32 = min(fp32, _time_conv(conv, x, bf16=False, repeats=2))
        bf16 = min(bf16, _time_conv(conv, x, bf16=True, repeats=2))
    return fp32, bf16


def measure_cpu_bf16() -> dict:
    """Time one Conv3d (16 -> 16 channels, 3^3 kernel, 24^3) in fp32 and under bf16 autocast.

    The size is the smallest at which the ratio is stable; even at 200x slower bf16 it stays
    under a second or two. One thread: the per-core ratio is what matters, and on a busy machine a
    millisecond kernel split over several threads waits for whichever thread the OS parked (seen:
    a 0.5 ms bf16 conv measured at 44 ms with 2 threads on 2 loaded cores)."""
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 24, 24, 24, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32, bf16 = _interleaved(conv, x)
    finally:
        torch.set_num_threads(threads)
    return {"fp32_s": fp32, "bf16_s": bf16, "threads": 1}


def cpu_bf16_probe(cache: Path | None = None, use_cache: bool = True) -> dict:
    """The probe's timings for this CPU, from the cache when the machine and its caps match."""
    ident = cpu_identity()
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache) if cache is not None else default_probe_cache()
    if use_cache and os.environ.get("AXON_PRECISION_PROBE_CACHE", "1") != "0":
        try:
            entry = json.loads(path.read_text()).get(key)
            if entry and {"fp32_s", "bf16_s"} <= set(entry):
                return {**entry, **ident, "from_cache": True}
        except (OSError, ValueError, AttributeError):
            pass
    result = {**measure_cpu_bf16(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if use_cache:
        _store(path, key, result)
    return {**result, **ident, "from_cache": False}


def _store(path: Path, key: str, entry: dict) -> None:
    """Best effort: a read-only home must not stop a reconstruction."""
    try:
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[key] = entry
        write_text(path, json.dumps(data, indent=1))  # whole or not at all: two runs may probe at once
    except OSError:
        pass
