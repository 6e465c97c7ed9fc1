"""Stage networks from a weights folder: the only way inference gets its models.

Training builds the same networks through `build_stage` (training sits above this layer), so a
trained folder always loads the architecture it was trained with.
"""

from __future__ import annotations

import json
import math
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from axonct.errors import AxonInputError
from axonct.pipeline.checkpoint import STAGES, load_into, load_stage
from axonct.presets import CARD_CARRIED_FIELDS, ModelPreset

SAMPLING_FILE = "sampling.json"


@dataclass
class SamplingDefaults:
    """How a weights folder samples by default: inference-only settings that never change a weight,
    so they live beside the weights (``sampling.json``) and can be tuned after training without
    rewriting the stage cards. A folder without the file samples with its training config's values."""

    coarse_steps: int
    fine_steps: int
    fine_strength: float  # Stage II start strength: 0 keeps Stage I's output, 1 redraws from noise

    @classmethod
    def from_preset(cls, preset: ModelPreset) -> "SamplingDefaults":
        return cls(preset.coarse.sample_steps, preset.prior.sample_steps, preset.prior.start_strength)

    @classmethod
    def load(cls, weights_dir: str | Path, preset: ModelPreset) -> "SamplingDefaults":
        path = Path(weights_dir) / SAMPLING_FILE
        if not path.exists():
            return cls.from_preset(preset)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AxonInputError(path, f"is not readable JSON ({exc})") from None
        if not isinstance(d, dict) or set(d) != {"coarse_steps", "fine_steps", "fine_strength"}:
            raise AxonInputError(path, "must hold exactly coarse_steps, fine_steps and fine_strength")
        limits = {"coarse_steps": preset.coarse.num_train_timesteps, "fine_steps": preset.prior.num_train_timesteps}
        steps_ok = all(isinstance(d[k], int) and not isinstance(d[k], bool) and 1 <= d[k] <= limits[k]
                       for k in ("coarse_steps", "fine_steps"))
        s = d["fine_strength"]
        if not steps_ok or not (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                                and 0.0 <= s <= 1.0):
            raise AxonInputError(path, f"needs whole steps from 1 to the weights' training timesteps "
                                       f"({limits['coarse_steps']} coarse, {limits['fine_steps']} fine) and a "
                                       "fine_strength from 0 to 1")
        return cls(d["coarse_steps"], d["fine_steps"], float(s))

    def to_dict(self) -> dict:
        return asdict(self)


def default_weights_dir() -> Path:
    """The demo weights shipped inside the engine package (axonct/weights/cpu): a `pip install`
    and the Slicer module find them the same way, wherever they were installed."""
    return Path(__file__).resolve().parents[1] / "weights" / "cpu"


def build_stage(stage: str, preset: ModelPreset, prior_dir: str | None = None) -> nn.Module:
    if stage == "coarse":
        from axonct.models.coarse import CoarseStage

        return CoarseStage(preset.coarse, preset.data, preset.diffusion_grid)
    if stage == "prior":
        from axonct.models.fine import CTPrior

        return CTPrior(preset.prior)
    if stage == "controlnet":
        from axonct.models.fine import ControlNetStage, CTPrior

        prior = CTPrior(preset.prior)
        if prior_dir is not None:
            state, _ = load_stage(prior_dir, "prior", expected=preset)
            load_into(prior, state, Path(prior_dir) / "prior.safetensors")
        return ControlNetStage.from_prior(prior, preset.prior)
    if stage == "sr":
        from axonct.models.sr import SRNet

        return SRNet(preset.sr)
    if stage == "baseline":
        from axonct.models.baselines import X2CTStyleCNN

        return X2CTStyleCNN(preset.coarse, preset.data, preset.diffusion_grid, preset.data.grid.size)
    raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")


def load_trained_stage(stage: str, weights_dir: str | Path, preset: ModelPreset,
                       device: str | torch.device = "cpu") -> nn.Module:
    """A stage network with its published (EMA) weights, checked against the preset; fields the
    weights carry (Stage I's input domain) come from their card."""
    state, info = load_stage(weights_dir, stage, expected=preset)
    if stage == "coarse":
        trained = ModelPreset.from_dict(info["config"]).coarse
        preset = dataclasses.replace(preset, coarse=dataclasses.replace(
            preset.coarse, **{k: getattr(trained, k) for k in CARD_CARRIED_FIELDS}))
    model = build_stage(stage, preset)
    load_into(model, state, Path(weights_dir) / f"{stage}.safetensors")
    return model.to(device).eval()
