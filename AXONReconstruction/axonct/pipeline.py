"""The three stages as one reconstruction: radiographs -> Stage I -> Stage II -> Stage III -> HU volume.

Progress goes to a callback as (stage, step, total); `ProgressLines` turns that into machine-readable
lines another process can follow (the Slicer module does) and checks for cancellation between steps,
so a SIGTERM stops the run at the next step with nothing written.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import read_card
from .ct_preprocess import ModelVolume
from .errors import AxonInputError
from .presets import ModelPreset
from .radiograph_io import Radiograph, read_radiograph
from .radiograph_preprocess import to_model_view

STAGE_ORDER = ("coarse", "fine", "sr")
PROGRESS_PREFIX = "AXON_PROGRESS "


class Cancelled(Exception):
    """Raised between steps when the user asked the run to stop."""


ProgressFn = Callable[[str, int, int], None]


@dataclass
class ProgressLines:
    """Machine-readable progress on a stream, a human bar on a terminal, and the cancel check."""

    stream: object = field(default_factory=lambda: sys.stdout)
    human: bool = False
    should_stop: Callable[[], bool] = lambda: False
    _t0: dict = field(default_factory=dict)
    _bar: object = None

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.should_stop():
            raise Cancelled()
        now = time.time()
        start = self._t0.setdefault(stage, now)
        done = step + 1
        eta = (now - start) / done * (total - done) if done else None
        msg = {"stage": stage, "step": done, "total": total, "eta_s": None if eta is None else round(eta, 1)}
        print(PROGRESS_PREFIX + json.dumps(msg), file=self.stream, flush=True)
        if self.human:
            self._human(stage, done, total)

    def message(self, text: str) -> None:
        print(PROGRESS_PREFIX + json.dumps({"message": text}), file=self.stream, flush=True)

    def _human(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.desc != stage:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=total, desc=stage, unit="step", file=sys.stderr)
        self._bar.update(done - self._bar.n)
        if done == total:
            self._bar.close()
            self._bar = None


def parse_progress_line(line: str) -> dict | None:
    """The inverse of ProgressLines, for followers (the Slicer module)."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        return json.loads(line[len(PROGRESS_PREFIX):])
    except json.JSONDecodeError:
        return None


@dataclass
class Reconstruction:
    mean: np.ndarray  # [S, S, S] unit volume on the final grid
    std: np.ndarray | None  # voxel-wise std over samples (unit), when samples > 1
    cuts: dict[str, np.ndarray]  # mean unit volume after each stage, at that stage's grid
    preset: ModelPreset
    views: np.ndarray  # [2, P, P] model input views
    view_mask: np.ndarray  # [2]
    seconds: dict[str, float]
    consistency: dict | None = None  # calibration per view and residuals, when consistency was on

    def volume(self, array: np.ndarray | None = None) -> ModelVolume:
        """The result (or another final-grid array) on the model grid, centred at the isocenter."""
        return ModelVolume(np.ascontiguousarray(self.mean if array is None else array, np.float32),
                           (0.0, 0.0, 0.0), self.preset.data.grid)


class AxonPipeline:
    """The three trained stages on one device; `load` reads them from a weights folder."""

    def __init__(self, preset: ModelPreset, coarse, fine, sr, device: str | torch.device = "cpu",
                 cards: dict | None = None, amp: bool | None = None):
        self.preset, self.coarse, self.fine, self.sr = preset, coarse, fine, sr
        self.device = torch.device(device)
        self.amp = (self.device.type in ("cpu", "cuda")) if amp is None else amp  # bf16 autocast
        self.cards = cards or {}

    @classmethod
    def load(cls, weights_dir: str | Path, device: str | torch.device = "cpu") -> "AxonPipeline":
        from .training import load_trained_stage

        weights_dir = Path(weights_dir)
        if not weights_dir.is_dir():
            raise AxonInputError(weights_dir, "weights folder not found (pass --weights DIR holding "
                                              "coarse/controlnet/sr .safetensors and .json)")
        card = read_card(weights_dir, "coarse")
        preset = ModelPreset.from_dict(card["config"])
        stages = [load_trained_stage(s, weights_dir, preset, device) for s in ("coarse", "controlnet", "sr")]
        cards = {s: read_card(weights_dir, s) for s in ("coarse", "controlnet", "sr")}
        return cls(preset, *stages, device=device, cards=cards)

    @classmethod
    def untrained(cls, preset: ModelPreset, device: str | torch.device = "cpu") -> "AxonPipeline":
        """Randomly initialised stages: same cost as trained ones (for benchmarks)."""
        from .training import build_stage

        torch.manual_seed(0)
        prior_stage = build_stage("controlnet", preset)
        stages = [build_stage("coarse", preset), prior_stage, build_stage("sr", preset)]
        return cls(preset, *[m.to(device).eval() for m in stages], device=device)

    # ------------------------------------------------------------------ inputs
    def model_views(self, frontal: str | Path | Radiograph | np.ndarray,
                    lateral: str | Path | Radiograph | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[2, P, P] views in [0, 1] and the [2] view mask from files, Radiographs or arrays."""
        size = self.preset.data.geometry.detector_pixels
        out = np.zeros((2, size, size), np.float32)
        mask = np.array([1.0, 0.0], np.float32)
        for i, (item, name) in enumerate(((frontal, "frontal"), (lateral, "lateral"))):
            if item is None:
                continue
            if isinstance(item, (str, Path)):
                item = read_radiograph(item, view=name)
            out[i] = to_model_view(item, size)
            mask[i] = 1.0
        return out, mask

    # ------------------------------------------------------------------ the run
    def _autocast(self):
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    def reconstruct(self, views: np.ndarray, view_mask: np.ndarray, steps: int | None = None,
                    samples: int = 1, seed: int = 0, progress: ProgressFn | None = None,
                    stop_after: str = "sr", coarse_guidance=None, fine_guidance=None,
                    consistency=None, start=None, fine_strength: float | None = None) -> Reconstruction:
        """``consistency``: a `consistency.ConsistencyConfig` to steer both samplers towards agreement
        with the input views (replaces the guidance arguments). ``start``: an optional [S,S,S] unit
        volume on the final grid (e.g. a template fit) that replaces Stage I's output as Stage II's
        starting point. ``fine_strength``: Stage II's SDEdit start strength (default: the weights' own)."""
        if samples < 1:
            raise AxonInputError(None, "--samples must be at least 1")
        if stop_after not in STAGE_ORDER:
            raise ValueError(f"stop_after must be one of {STAGE_ORDER}")
        progress = progress or (lambda stage, step, total: None)
        v = torch.from_numpy(views)[None].to(self.device)
        m = torch.from_numpy(view_mask)[None].to(self.device)
        seconds = {k: 0.0 for k in STAGE_ORDER}
        collected: dict[str, list[torch.Tensor]] = {k: [] for k in STAGE_ORDER}
        coarse_steps = steps or self.preset.coarse.sample_steps
        fine_steps = steps or self.preset.prior.sample_steps
        checker = None
        if consistency is not None:
            from .consistency import ViewConsistency

            checker = ViewConsistency(views, view_mask, self.preset.data.diffusion_grid(self.preset.sr.factor),
                                      self.preset.data.geometry, consistency)
            coarse_guidance = checker.bridge_guidance(self.coarse.scheduler)
            fine_guidance = checker.cg_guidance()
        start_lo = None
        if start is not None:
            s_t = torch.from_numpy(np.ascontiguousarray(start, np.float32))[None, None] * 2 - 1
            f = self.preset.sr.factor
            start_lo = (F.avg_pool3d(s_t, f) if f > 1 else s_t).to(self.device)
        for k in range(samples):
            gen = torch.Generator().manual_seed(int(seed) * 1000 + k)
            tag = f" (sample {k + 1}/{samples})" if samples > 1 else ""
            with torch.no_grad(), self._autocast():
                t = time.time()
                if start_lo is not None:
                    x = start_lo.clone()
                    progress("coarse" + tag, 0, 1)
                else:
                    x = self.coarse.sample(v, m, num_steps=coarse_steps, generator=gen, guidance=coarse_guidance,
                                           progress=lambda i, n: progress("coarse" + tag, i, n)).float()
                seconds["coarse"] += time.time() - t
                collected["coarse"].append(x)
                if stop_after != "coarse":
                    t = time.time()
                    x = self.fine.sample(x, gen, num_steps=fine_steps, guidance=fine_guidance,
                                         start_strength=fine_strength,
                                         progress=lambda i, n: progress("fine" + tag, i, n)).float()
                    seconds["fine"] += time.time() - t
                    collected["fine"].append(x)
                if stop_after == "sr":
                    from .sr_stage import upsample_tiled

                    t = time.time()
                    x = upsample_tiled(self.sr, x, progress=lambda i, n: progress("sr" + tag, i, n)).float()
                    seconds["sr"] += time.time() - t
                    collected["sr"].append(x)
        unit = {k: ((torch.cat(v_, 0) + 1) / 2).clamp(0, 1).cpu() for k, v_ in collected.items() if v_}
        cuts = {k: u.mean(0)[0].numpy() for k, u in unit.items()}
        last = unit[stop_after]
        final = last if stop_after == "sr" else to_final_grid(last, self.preset.data.grid.size)
        mean = final.mean(0)[0].numpy()
        std = final.std(0, unbiased=True)[0].numpy() if samples > 1 else None
        report = checker.report(mean) if checker is not None else None
        return Reconstruction(mean, std, cuts, self.preset, views, view_mask, seconds, report)


def to_final_grid(unit: torch.Tensor, size: int) -> torch.Tensor:
    """Trilinear resize of a coarser stage's output, only to compare stage cuts on one grid."""
    if unit.shape[-1] == size:
        return unit
    return F.interpolate(unit, size=(size,) * 3, mode="trilinear", align_corners=False)
