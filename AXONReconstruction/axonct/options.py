"""Options, defined once: `ReconstructOptions`, the one options object of a reconstruction from the
Slicer panel or the command line to the sampler, with each option's default, limits, allowed values
and help text in its field's metadata (`OPTIONS`); the argparse types that check them (exit 2, one
line naming the option); and the limits of the other commands' options.

Front ends read everything from here: the `axon` parser (`axonct.app.arguments`), the Slicer panel's
widgets and parameter node (`AXONReconstructionLib.panel`), and the worker's JSON options document
(`ReconstructOptions.from_json`). Torch-free on purpose: the Slicer GUI process imports it without
loading the engine.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from axonct.errors import AxonInputError

MAX_SEED = 2**32 - 1
"""Seeds run from 0 to 2^32 - 1 (every random generator AXON seeds accepts them, with per-case offsets)."""

MAX_SAMPLING_STEPS = 1000
"""Sampling steps of a stage: at most one per training timestep (every preset trains 1000); weights
with fewer timesteps are checked against their own schedulers when loaded."""
MAX_SAMPLES = 64
"""`--samples` K: mean and std are streamed (memory does not grow with K); time grows linearly."""

MAX_TRAIN_STEPS = 10**9
MAX_BATCH_SIZE = 4096

PRECISIONS = ("auto", "bf16", "fp32")
LEGACY_PRECISION = {"off": "fp32", "float32": "fp32", "bfloat16": "bf16", "none": "fp32"}  # old --amp values
DEVICES = ("auto", "cuda", "cpu")
"""The devices a front end offers; `--device` also takes cuda:N."""
DEVICES_HINT = "auto, cpu, cuda or cuda:N"
START_MODES = ("stage1", "template")
FRAMINGS = ("auto", "none")
SWITCH = {"on": True, "off": False}
"""How the command line spells an on/off option."""


def _int(text: str, lo: int, hi: int, what: str) -> int:
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; {what}") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{value} is out of range; {what}")
    return value


def normalise_precision(value: str | None, option: str = "--precision") -> str:
    """'auto' | 'bf16' | 'fp32' from user input (None = auto), accepting the old --amp spellings ('off')."""
    v = ("auto" if value is None else str(value)).strip().lower()
    v = LEGACY_PRECISION.get(v, v)
    if v not in PRECISIONS:
        raise AxonInputError(None, f"{option} must be one of {', '.join(PRECISIONS)} (got {value!r})")
    return v


# ----------------------------------------------------------------------------- one option
@dataclass(frozen=True)
class OptionSpec:
    """What a front end needs to offer one option of `ReconstructOptions`, read from its field."""

    name: str  # the field
    kind: str  # "int", "float", "switch" (a bool, on/off), "choice" or "device"
    default: Any
    help: str  # one sentence for a tooltip or `--help`, without the default or the limits
    low: float | None = None
    high: float | None = None
    choices: tuple = ()  # "choice" and "device": the values a front end offers
    unset: str = ""  # an optional value (default None): what leaving it unset means
    quantity: str = ""  # the value's name in a refusal ("sampling steps run from 1 to 1000")
    step: float = 1  # a panel's increment; an optional value's "unset" sits one step below `low`
    decimals: int = 0
    unit: str = ""  # "millimetres"
    off: str | None = None  # a choice that turns the feature off (the panel shows a check box)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def optional(self) -> bool:
        return self.default is None

    def limits(self) -> str:
        """'1 to 1000', 'on or off', 'auto, bf16 or fp32' (for help texts)."""
        if self.kind in ("int", "float"):
            return f"{_num(self.low)} to {_num(self.high)}" + (f" {self.unit}" if self.unit else "")
        values = tuple(SWITCH) if self.kind == "switch" else self.choices
        return ", ".join(values[:-1]) + " or " + values[-1] + (" (or cuda:N)" if self.kind == "device" else "")

    def shown_default(self) -> str:
        """The default as a user types it, or what leaving the option out means."""
        if self.optional:
            return self.unset
        if self.kind == "switch":
            return "on" if self.default else "off"
        return _num(self.default) if self.kind == "float" else str(self.default)

    # ---------------------------------------------------------------- checks
    def check(self, value) -> None:
        """Raise AxonInputError (one line naming the option) unless ``value`` is allowed."""
        if value is None and self.optional:
            return
        ok = {"int": lambda v: _is_int(v) and self.low <= v <= self.high,
              "float": lambda v: _is_number(v) and self.low <= v <= self.high,
              "switch": lambda v: isinstance(v, bool),
              "choice": lambda v: v in self.choices,
              "device": lambda v: isinstance(v, str) and bool(v.strip())}[self.kind](value)
        if ok:
            return
        if self.kind == "device":
            raise AxonInputError(None, f"{self.flag} must be {DEVICES_HINT}")
        if self.kind in ("int", "float"):
            number = "a whole number" if self.kind == "int" else "a number" + (f" of {self.unit}" if self.unit else "")
            must = f"{number} from {_num(self.low)} to {_num(self.high)}"
        else:
            must = "on or off" if self.kind == "switch" else f"one of {', '.join(self.choices)}"
        raise AxonInputError(None, f"{self.flag} must be {must} (got {value!r})")

    def parse(self, text: str):
        """The argparse type of the option: its text -> its value, or a one-line refusal."""
        if self.kind in ("int", "float"):
            what = f"{self.quantity} from {_num(self.low)} to {_num(self.high)}"
            if self.kind == "int":
                return _int(text, int(self.low), int(self.high), what)
            return _float(text, self.low, self.high, what)
        if self.name == "precision":
            try:
                return normalise_precision(text)
            except AxonInputError:
                raise argparse.ArgumentTypeError(f"choose {self.limits()} (got {text!r})") from None
        word = str(text).strip().lower()
        if self.kind == "switch" and word in SWITCH:
            return SWITCH[word]
        if self.kind == "choice" and word in self.choices:
            return word
        if self.kind == "device" and word:
            return word
        raise argparse.ArgumentTypeError(f"choose {self.limits()} (got {text!r})")


def _num(value: float) -> str:
    """A limit as a user types it: 4294967295, 0.05, 60."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _float(text: str, lo: float, hi: float, what: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; {what}") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise argparse.ArgumentTypeError(f"{text} is out of range; {what}")
    return value


def _option(default, kind: str, help: str, **spec):
    """A `ReconstructOptions` field whose metadata is its `OptionSpec` (all but name and default)."""
    return field(default=default, metadata={"option": dict(kind=kind, help=help, **spec)})


# ----------------------------------------------------------------------------- one reconstruction
@dataclass
class ReconstructOptions:
    """What a user may choose for one reconstruction. ``None`` = the weights' own sampling default
    (their ``sampling.json``) or, for the lung-field width, the engine's measurement."""

    device: str = _option(
        "auto", "device", "where the networks run: auto uses a CUDA GPU when PyTorch sees one, else the CPU",
        choices=DEVICES)
    precision: str = _option(
        "auto", "choice",
        "number format of the networks: auto uses bf16 on GPUs that support it and on CPUs where a quick "
        "measurement shows bf16 is faster, otherwise fp32 (on CPUs without native bf16, most laptops with AVX2 "
        "only, bf16 is 10-200x slower); the report says what was chosen and why", choices=PRECISIONS)
    steps: int | None = _option(
        None, "int", "sampling steps of stages I and II: more steps take longer", low=1, high=MAX_SAMPLING_STEPS,
        unset="the weights' sampling.json", quantity="sampling steps run")
    samples: int = _option(
        1, "int", "stochastic samples K, averaged; more than 1 also gives their voxel-wise standard deviation "
        "(an uncertainty map). Streamed: memory does not grow with K, time does (one batch on a GPU)",
        low=1, high=MAX_SAMPLES, quantity="samples run")
    seed: int = _option(
        0, "int", "random seed: the same inputs, options and seed give the same reconstruction", low=0,
        high=MAX_SEED, quantity="a seed runs")
    consistency: bool = _option(
        True, "switch", "steer sampling towards agreement with the input radiographs: the volume's projections "
        "are compared with them (after a per-view intensity and position calibration) and corrected at every step")
    consistency_strength: float = _option(
        1.0, "float", "how strongly sampling is steered towards the input radiographs: 1 is a full line-search "
        "step (Stage I) or CG correction (Stage II) per step, 0 none", low=0.0, high=4.0, step=0.1, decimals=2,
        quantity="the consistency strength runs")
    start: str = _option(
        "stage1", "choice", "what Stage II starts from: Stage I's output, or the training CT warped to match the "
        "radiographs (template fit; slower)", choices=START_MODES)
    fine_strength: float | None = _option(
        None, "float", "Stage II start strength: how much of its starting volume Stage II redraws", low=0.0,
        high=1.0, step=0.05, decimals=2, unset="the weights' sampling.json",
        quantity="the Stage II start strength runs")
    framing: str = _option(
        "auto", "choice", "auto: scale and centre each radiograph so its lung fields sit where the training DRRs "
        "put them (found by the lung-field network; else by its pixel spacing, else the whole image); none: the "
        "whole image, padded to a square", choices=FRAMINGS, off="none")
    thorax_width_mm: float | None = _option(
        None, "float", "the patient's lung-field width on the frontal radiograph: sets the output's voxel size "
        "when the image has no pixel spacing", low=60.0, high=450.0, step=5.0, unit="millimetres",
        unset="measured from the pixel spacing, else assumed from the patient's age in the file, else an adult "
              "like the training CT", quantity="the lung-field width runs")
    lung_fields: bool = _option(
        True, "switch", "with consistency: keep air behind the input radiograph's lung fields and out of the "
        "rest of the body while sampling")

    def validate(self) -> "ReconstructOptions":
        """Raise AxonInputError naming the option; returns self so calls chain."""
        for spec in OPTIONS.values():
            spec.check(getattr(self, spec.name))
        return self

    # ------------------------------------------------------------------ the one serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReconstructOptions":
        """Options from a mapping of field names (missing ones keep their defaults), validated."""
        if not isinstance(d, dict):
            raise AxonInputError(None, f"reconstruction options must be a JSON object of option names, "
                                       f"not {type(d).__name__}")
        unknown = set(d) - set(OPTIONS)
        if unknown:
            raise AxonInputError(None, f"unknown reconstruction options: {', '.join(sorted(unknown))}")
        return cls(**d).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, path: str | Path) -> "ReconstructOptions":
        """Options from a JSON document (`to_json`: what the Slicer panel hands its worker), validated;
        every problem is one line naming the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise AxonInputError(path, f"cannot be read ({exc.strerror or exc})") from None
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AxonInputError(path, f"is not a JSON document of reconstruction options ({exc})") from None
        except AxonInputError as exc:
            raise AxonInputError(path, exc.problem) from None


OPTIONS: dict[str, OptionSpec] = {f.name: OptionSpec(name=f.name, default=f.default, **f.metadata["option"])
                                  for f in fields(ReconstructOptions)}
"""Every option of a reconstruction, by field name, in the order a front end shows them."""


# ----------------------------------------------------------------------------- other commands' limits
def train_steps(text: str) -> int:
    return _int(text, 1, MAX_TRAIN_STEPS, f"training steps run from 1 to {MAX_TRAIN_STEPS}")


def batch_size(text: str) -> int:
    return _int(text, 1, MAX_BATCH_SIZE, f"the batch size runs from 1 to {MAX_BATCH_SIZE}")


def positive_int(text: str) -> int:
    return _int(text, 1, 2**31 - 1, "it must be at least 1")


def bounded_int(lo: int, hi: int, what: str):
    """An argparse type for whole numbers from ``lo`` to ``hi``; ``what`` names the quantity."""
    def parse(text: str) -> int:
        return _int(text, lo, hi, f"{what} runs from {lo} to {hi}")
    return parse


def positive_float(what: str, hi: float = math.inf):
    """An argparse type for finite numbers above 0 (and at most ``hi``); ``what`` names the quantity."""
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {what} must be above 0") from None
        if not math.isfinite(value) or value <= 0 or value > hi:
            limit = "" if hi == math.inf else f" and at most {hi:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range; {what} must be a finite number above 0{limit}")
        return value
    return parse


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
