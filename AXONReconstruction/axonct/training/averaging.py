"""One stage's weights averaged from two fine-tunes of the same start (a "model soup").

Two fine-tunes that began from the same weights lie in one basin, so their parameter-wise average is
a network too, and it often keeps much of what each learned at less cost to either than one run
trained on both (the bundled Stage I: 9a, real films; 9b, clean DRRs). The averaged card's record is
the union of both parents' (cases, caches, synthetic sources), so "seen in training" stays true for
everything either saw, plus the parents and the weight.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from axonct.errors import AxonInputError
from axonct.pipeline.checkpoint import STAGES, load_stage, save_stage, stage_paths
from axonct.presets import ModelPreset
from axonct.training.trainer import merge_training_record, record_steps


def average_stage(first: str | Path, second: str | Path, out: str | Path, stage: str = "coarse",
                  second_weight: float = 0.5) -> Path:
    """Write ``(1 - w) * first + w * second`` of ``stage`` into ``out``, with the other stages and the
    sampling card copied from ``first``; returns the averaged weights file."""
    first, second, out = Path(first), Path(second), Path(out)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    if not 0.0 <= second_weight <= 1.0:
        raise ValueError(f"the second weight must lie in [0, 1], not {second_weight}")
    a, card_a = load_stage(first, stage)
    preset = ModelPreset.from_dict(card_a["config"])
    b, card_b = load_stage(second, stage, expected=preset)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise AxonInputError(stage_paths(second, stage)[0],
                             f"its {stage} network differs from {first}'s in its tensors; only two fine-tunes "
                             "of the same network can be averaged")
    mixed = {k: (a[k] * (1 - second_weight) + b[k] * second_weight).to(a[k].dtype) if a[k].is_floating_point()
             else a[k] for k in a}
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != first.resolve():
        for path in first.iterdir():  # the other stages and the sampling card, as in the first folder
            if path.suffix in (".safetensors", ".json") and not path.name.startswith(f"{stage}."):
                shutil.copy2(path, out / path.name)
    record_a, record_b = card_a.get("trained_on") or {}, card_b.get("trained_on") or {}
    trained_on = merge_training_record(record_a, record_b)
    trained_on["averaged_from"] = {
        "first": {"weights": str(first), "steps": record_steps(record_a)},
        "second": {"weights": str(second), "steps": record_steps(record_b)},
        "second_weight": second_weight,
    }
    return save_stage(out, stage, mixed, preset, trained_on)
