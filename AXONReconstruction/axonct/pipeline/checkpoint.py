"""Stage weights: one safetensors file per stage plus a JSON card that says what they are.

The card records the format version, the preset (and its full config), the input normalisation and
geometry, what data trained the weights, and the file's SHA-256; loading checks all of it and refuses
a mismatch with a message that says what to do.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from axonct.atomic import atomic_path, sha256_file, write_text
from axonct.errors import AxonInputError
from axonct.presets import ModelPreset, network_config

FORMAT_VERSION = 1
STAGES = ("coarse", "prior", "controlnet", "sr", "baseline")



def stage_paths(folder: str | Path, stage: str) -> tuple[Path, Path]:
    folder = Path(folder)
    return folder / f"{stage}.safetensors", folder / f"{stage}.json"


@contextmanager
def writing_safetensors(path: str | Path, state_dict: dict, metadata: dict[str, str]):
    """Write ``state_dict`` (on the CPU, contiguous) as safetensors at ``path`` atomically; yields
    (tensors, SHA-256 of the file) before the file is moved into place, so a card written inside
    the block exists before the weights do. Every weights file AXON writes goes through here."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        yield tensors, sha256_file(tmp)


def save_stage(folder: str | Path, stage: str, state_dict: dict, preset: ModelPreset, trained_on: dict) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    weights, card = stage_paths(folder, stage)
    with writing_safetensors(weights, state_dict, {"stage": stage, "format_version": str(FORMAT_VERSION)}) as written:
        tensors, digest = written
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
    if not isinstance(info, dict):
        raise AxonInputError(card, f"is not a weights card: it holds a JSON {type(info).__name__}, not an object")
    if info.get("format_version") != FORMAT_VERSION:
        raise AxonInputError(card, f"has weights format version {info.get('format_version')}, this AXON reads "
                                   f"version {FORMAT_VERSION}; retrain or use a matching AXON release")
    if info.get("stage") != stage:
        raise AxonInputError(card, f"holds the {info.get('stage')!r} stage, not {stage!r}")
    _check_card_fields(info, card)
    return info


CARD_FIELDS = {"format_version": int, "stage": str, "preset": str, "config": dict, "normalisation": dict,
               "geometry": dict, "trained_on": dict, "sha256": str, "tensors": dict}
"""Every field a weight card must have, with its JSON type (checked like the weights' checksum)."""


def _check_card_fields(info, card: Path) -> None:
    import dataclasses

    if not isinstance(info, dict):
        raise AxonInputError(card, "is not a weight card (a JSON object is expected); copy it again or retrain")
    for key, kind in CARD_FIELDS.items():
        if key not in info:
            raise AxonInputError(card, f"is incomplete: the field {key!r} is missing; copy it again or retrain")
        value = info[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise AxonInputError(card, f"field {key!r} should be a {_json_kind(kind)}, not "
                                       f"{_json_kind(type(value))}; the card is damaged: copy it again or retrain")
    if len(info["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in info["sha256"].lower()):
        raise AxonInputError(card, "field 'sha256' is not a SHA-256 hex digest; the card is damaged")
    cases = info["trained_on"].get("cases", [])
    if not isinstance(cases, list) or not all(isinstance(c, str) for c in cases):
        raise AxonInputError(card, "field 'trained_on.cases' should be a list of case IDs; the card is damaged")
    try:
        preset = ModelPreset.from_dict(info["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise AxonInputError(card, f"field 'config' cannot be read as a preset ({exc}); the card is damaged") from None

    def walk(obj, where):
        default = type(obj)()
        for f in dataclasses.fields(obj):
            value, ref = getattr(obj, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(ref):
                walk(value, f"{where}.{f.name}")
                continue
            ok = (isinstance(value, type(ref)) and isinstance(value, bool) == isinstance(ref, bool)) or \
                 (type(ref) is float and type(value) is int) or ref is None or value is None
            if ok and isinstance(ref, tuple) and ref:
                kind = type(ref[0])
                ok = all(isinstance(v, kind) and isinstance(v, bool) == (kind is bool) for v in value)
            if not ok:
                raise AxonInputError(card, f"field 'config{where}.{f.name}' should be a {_json_kind(type(ref))}, "
                                           f"not {_json_kind(type(value))} ({value!r}); the card is damaged")

    for section in ("data", "coarse", "prior", "sr", "train"):
        try:
            walk(getattr(preset, section), f".{section}")
        except TypeError:
            continue  # a section without defaults: nothing to compare against


def _json_kind(kind: type) -> str:
    return {int: "whole number", float: "number", str: "string", dict: "JSON object", list: "list",
            tuple: "list", bool: "true/false", type(None): "null"}.get(kind, kind.__name__)


RESUME_FIELDS = {"stage": str, "preset": dict, "step": int, "model": dict, "optimizer": dict, "ema": list}


def read_resume(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A trainer's resume.pt, checked like the weights: unreadable, truncated or incomplete files are
    refused with a message naming the file (never a traceback)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise AxonInputError(path, f"cannot be read (truncated or corrupt: {type(exc).__name__}: {exc}); restore "
                                   "it from a copy, or start afresh in another --out") from None
    if not isinstance(state, dict):
        raise AxonInputError(path, "is not an AXON training checkpoint; start afresh in another --out")
    for key, kind in RESUME_FIELDS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise AxonInputError(path, f"is incomplete or damaged (field {key!r} missing or of the wrong type); "
                                       "restore it from a copy, or start afresh in another --out")
    if state["step"] < 0:
        raise AxonInputError(path, f"records a negative step ({state['step']}); the file is damaged")
    return state


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
    if network_config(getattr(trained, section)) != network_config(getattr(expected, section)):
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
