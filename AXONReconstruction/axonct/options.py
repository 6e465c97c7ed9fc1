"""Options, defined once: their limits, the argparse types that check them (exit 2, one line naming
the option), and `ReconstructOptions`, the one options object of a reconstruction from the Slicer
panel or the command line to the sampler.

Torch-free on purpose: the Slicer GUI process imports it without loading the engine.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
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


def _int(text: str, lo: int, hi: int, what: str) -> int:
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; {what}") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{value} is out of range; {what}")
    return value


def sampling_steps(text: str) -> int:
    return _int(text, 1, MAX_SAMPLING_STEPS, f"sampling steps run from 1 to {MAX_SAMPLING_STEPS}")


def samples(text: str) -> int:
    return _int(text, 1, MAX_SAMPLES, f"samples run from 1 to {MAX_SAMPLES}")


def seed(text: str) -> int:
    return _int(text, 0, MAX_SEED, f"a seed runs from 0 to {MAX_SEED} (2^32 - 1)")


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


# ----------------------------------------------------------------------------- one reconstruction
DEVICES_HINT = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("auto", "bf16", "fp32")
LEGACY_PRECISION = {"off": "fp32", "float32": "fp32", "bfloat16": "bf16", "none": "fp32"}  # old --amp values
START_MODES = ("stage1", "template")
MAX_CONSISTENCY_STRENGTH = 4.0
FRAMINGS = ("auto", "none")
THORAX_WIDTH_MM = (60.0, 450.0)
"""Lung-field widths a user may give, newborn to the largest adult."""


@dataclass
class ReconstructOptions:
    """What a user may choose for one reconstruction. ``None`` = the weights' own sampling default
    (their ``sampling.json``)."""

    device: str = "auto"
    precision: str = "auto"
    steps: int | None = None  # sampling steps of stages I and II
    samples: int = 1  # K stochastic samples -> mean and voxel-wise std
    seed: int = 0
    consistency: bool = True  # steer sampling towards agreement with the input views
    consistency_strength: float = 1.0  # 0-4; 1 = a full correction per step
    start: str = "stage1"  # Stage II starts from Stage I's output, or from a template fit
    fine_strength: float | None = None  # Stage II start strength 0-1 (how much of Stage I it redraws)
    framing: str = "auto"  # frame the radiographs by their lung fields like the training DRRs, or "none"
    thorax_width_mm: float | None = None  # the patient's lung-field width; None = measured or assumed
    lung_fields: bool = True  # keep air behind the input's lung fields during sampling (with consistency)

    def validate(self) -> "ReconstructOptions":
        """Raise AxonInputError naming the option; returns self so calls chain."""
        def bad(option: str, problem: str):
            raise AxonInputError(None, f"{option} {problem}")

        if not isinstance(self.device, str) or not self.device.strip():
            bad("--device", f"must be {DEVICES_HINT}")
        if self.precision not in PRECISIONS:
            bad("--precision", f"must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.steps is not None and not (_is_int(self.steps) and 1 <= self.steps <= MAX_SAMPLING_STEPS):
            bad("--steps", f"must be a whole number from 1 to {MAX_SAMPLING_STEPS} (got {self.steps!r})")
        if not (_is_int(self.samples) and 1 <= self.samples <= MAX_SAMPLES):
            bad("--samples", f"must be a whole number from 1 to {MAX_SAMPLES} (got {self.samples!r})")
        if not (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED):
            bad("--seed", f"must be a whole number from 0 to {MAX_SEED} (got {self.seed!r})")
        if not isinstance(self.consistency, bool):
            bad("--consistency", f"must be on or off (got {self.consistency!r})")
        if not (_is_number(self.consistency_strength) and 0.0 <= self.consistency_strength <= MAX_CONSISTENCY_STRENGTH):
            bad("--consistency-strength", f"must be a number from 0 to {MAX_CONSISTENCY_STRENGTH:g} "
                                          f"(got {self.consistency_strength!r})")
        if self.start not in START_MODES:
            bad("--start", f"must be one of {', '.join(START_MODES)} (got {self.start!r})")
        if self.fine_strength is not None and not (_is_number(self.fine_strength) and 0.0 <= self.fine_strength <= 1.0):
            bad("--fine-strength", f"must be a number from 0 to 1 (got {self.fine_strength!r})")
        if self.framing not in FRAMINGS:
            bad("--framing", f"must be one of {', '.join(FRAMINGS)} (got {self.framing!r})")
        lo, hi = THORAX_WIDTH_MM
        if self.thorax_width_mm is not None and not (_is_number(self.thorax_width_mm) and lo <= self.thorax_width_mm <= hi):
            bad("--thorax-width-mm", f"must be a number of millimetres from {lo:g} to {hi:g} (got {self.thorax_width_mm!r})")
        if not isinstance(self.lung_fields, bool):
            bad("--lung-fields", f"must be on or off (got {self.lung_fields!r})")
        return self

    # ------------------------------------------------------------------ the one serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReconstructOptions":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise AxonInputError(None, f"unknown reconstruction options: {', '.join(sorted(unknown))}")
        return cls(**d).validate()

    def to_cli_args(self) -> list[str]:
        """The `axon reconstruct` arguments that give exactly these options (what a front end runs)."""
        args = ["--device", self.device, "--precision", self.precision, "--samples", str(self.samples),
                "--seed", str(self.seed), "--consistency", "on" if self.consistency else "off",
                "--consistency-strength", repr(float(self.consistency_strength)), "--start", self.start]
        if self.steps is not None:
            args += ["--steps", str(self.steps)]
        if self.fine_strength is not None:
            args += ["--fine-strength", repr(float(self.fine_strength))]
        args += ["--framing", self.framing, "--lung-fields", "on" if self.lung_fields else "off"]
        if self.thorax_width_mm is not None:
            args += ["--thorax-width-mm", repr(float(self.thorax_width_mm))]
        return args


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
