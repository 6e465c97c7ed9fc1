"""Numeric command-line options, checked by argparse before any work (exit 2, one line naming the option).

Each function is an argparse ``type=``: it returns the value or raises ``ArgumentTypeError``, which
argparse reports as ``axon CMD: error: argument --NAME: ...``.
"""

from __future__ import annotations

import argparse

MAX_SEED = 2**32 - 1
"""Seeds run from 0 to 2^32 - 1 (every random generator AXON seeds accepts them, with per-case offsets)."""

MAX_SAMPLING_STEPS = 10_000
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
