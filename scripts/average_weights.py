"""Average one stage's weights from two fine-tunes of the same start (a "model soup").

Two Stage I fine-tunes that began from the same weights lie in one basin, so their average is a
network too; it often keeps what each learned (phase 7: real films; phase 8: clean DRRs) at less
cost to either than one run trained on both. The other stages and the sampling card are copied from
the first folder; the averaged stage's card records both parents and the weight.

Usage: python scripts/average_weights.py FIRST SECOND --out DIR [--stage coarse] [--second-weight 0.5]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from axonct.pipeline.checkpoint import STAGES, load_stage, save_stage
from axonct.presets import ModelPreset


def average(first: Path, second: Path, out: Path, stage: str, weight: float) -> Path:
    if not 0.0 <= weight <= 1.0:
        raise SystemExit(f"--second-weight {weight}: must lie in [0, 1]")
    a, card_a = load_stage(first, stage)
    b, card_b = load_stage(second, stage, expected=ModelPreset.from_dict(card_a["config"]))
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise SystemExit(f"{first} and {second}: the {stage} networks differ in their tensors")
    mixed = {k: (a[k] * (1 - weight) + b[k] * weight).to(a[k].dtype) if a[k].is_floating_point() else a[k]
             for k in a}
    out.mkdir(parents=True, exist_ok=True)
    for path in first.iterdir():  # the other stages and the sampling card, as in the first folder
        if path.suffix in (".safetensors", ".json") and not path.name.startswith(f"{stage}."):
            shutil.copy2(path, out / path.name)
    trained_on = {"average_of": {str(first): card_a["trained_on"], str(second): card_b["trained_on"]},
                  "second_weight": weight}
    return save_stage(out, stage, mixed, ModelPreset.from_dict(card_a["config"]), trained_on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", default="coarse", choices=STAGES)
    parser.add_argument("--second-weight", type=float, default=0.5)
    args = parser.parse_args()
    print(average(args.first, args.second, args.out, args.stage, args.second_weight))


if __name__ == "__main__":
    main()
