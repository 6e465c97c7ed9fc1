"""Stage weights: one safetensors file per stage plus a JSON card that says what they are.

The card records the format version, the preset (and its full config), the input normalisation and
geometry, what data trained the weights, and the file's SHA-256; loading checks all of it and refuses
a mismatch with a message that says what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .atomic import atomic_path, sha256_file, write_text
from .errors import AxonInputError
from .presets import ModelPreset

FORMAT_VERSION = 1
STAGES = ("coarse", "prior", "controlnet", "sr", "baseline")



def stage_paths(folder: str | Path, stage: str) -> tuple[Path, Path]:
    folder = Path(folder)
    return folder / f"{stage}.safetensors", folder / f"{stage}.json"


def save_stage(folder: str | Path, stage: str, state_dict: dict, preset: ModelPreset, trained_on: dict) -> Path:
    from safetensors.torch import save_file

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    weights, card = stage_paths(folder, stage)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"stage": stage, "format_version": str(FORMAT_VERSION)})
        digest = sha256_file(tmp)
    info = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "preset": preset.name,
        "config": preset.to_dict(),
        "normalisation": {
            "hu_min": preset.data.grid.hu_min, "hu_max": preset.data.grid.hu_max,
            "model_range": [-1.0, 1.0], "views": "percentile-normalised [0, 1], bright = attenuating",
        },
        "geometry": preset.data.to_dict()["geometry"],
        "trained_on": trained_on,
        "sha256": digest,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    write_text(card, json.dumps(info, indent=2))
    return weights


def read_card(folder: str | Path, stage: str) -> dict:
    weights, card = stage_paths(folder, stage)
    if not card.exists() or not weights.exists():
        missing = card if not card.exists() else weights
        raise AxonInputError(missing, f"missing: the {stage} stage weights need both {weights.name} and {card.name}")
    try:
        info = json.loads(card.read_text())
    except json.JSONDecodeError as exc:
        raise AxonInputError(card, f"is not valid JSON ({exc})") from exc
    if info.get("format_version") != FORMAT_VERSION:
        raise AxonInputError(card, f"has weights format version {info.get('format_version')}, this AXON reads "
                                   f"version {FORMAT_VERSION}; retrain or use a matching AXON release")
    if info.get("stage") != stage:
        raise AxonInputError(card, f"holds the {info.get('stage')!r} stage, not {stage!r}")
    return info


def load_stage(folder: str | Path, stage: str, expected: ModelPreset | None = None,
               device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(state_dict, card) after checking version, stage, checksum and, if given, the preset."""
    from safetensors.torch import load_file

    info = read_card(folder, stage)
    weights, card = stage_paths(folder, stage)
    if sha256_file(weights) != info.get("sha256"):
        raise AxonInputError(weights, "checksum does not match its card: the file is truncated or was modified; "
                                      "copy it again or retrain")
    if expected is not None:
        check_compatible(info, expected, card)
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as exc:
        raise AxonInputError(weights, f"cannot be read as safetensors ({exc})") from exc
    return state, info


def check_compatible(info: dict, expected: ModelPreset, where: Path) -> None:
    trained = ModelPreset.from_dict(info["config"])
    section = {"coarse": "coarse", "prior": "prior", "controlnet": "prior", "sr": "sr", "baseline": "coarse"}[info["stage"]]
    problems = []
    if trained.data.to_dict() != expected.data.to_dict():
        problems.append("grid/geometry differ")
    if getattr(trained, section) != getattr(expected, section):
        problems.append(f"{section} network config differs")
    if problems:
        raise AxonInputError(where, f"weights were trained for preset {trained.name!r}, not {expected.name!r} "
                                    f"({'; '.join(problems)}); pass matching --weights or --config")


def load_into(module: torch.nn.Module, state: dict, where: str | Path) -> None:
    """Strict load with a readable account of missing, unexpected and mis-shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} tensors of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise AxonInputError(where, "weights do not fit this network: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
