"""Set a weights folder's sampling defaults: its `sampling.json` (inference-only settings).

Sampling settings do not change a single weight, so they may be tuned after training on a
held-out tuning set; they live beside the weights, and the stage cards and weights files (and their
SHA-256) stay as they are.

    python scripts/set_sampling_defaults.py WEIGHTS_DIR [--fine-strength 0.0] [--steps-coarse 20] [--steps-fine 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AXONReconstruction"))

from axonct.atomic import write_text  # noqa: E402
from axonct.pipeline.checkpoint import read_card  # noqa: E402
from axonct.pipeline.loading import SAMPLING_FILE, SamplingDefaults  # noqa: E402
from axonct.presets import ModelPreset  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--fine-strength", type=float, help="Stage II start strength (0-1)")
    parser.add_argument("--steps-coarse", type=int, help="Stage I sampling steps")
    parser.add_argument("--steps-fine", type=int, help="Stage II sampling steps")
    args = parser.parse_args(argv)
    preset = ModelPreset.from_dict(read_card(args.weights, "coarse")["config"])
    current = SamplingDefaults.load(args.weights, preset)
    if args.fine_strength is not None:
        current.fine_strength = args.fine_strength
    if args.steps_coarse is not None:
        current.coarse_steps = args.steps_coarse
    if args.steps_fine is not None:
        current.fine_steps = args.steps_fine
    path = args.weights / SAMPLING_FILE
    write_text(path, json.dumps(current.to_dict(), indent=2) + "\n")
    SamplingDefaults.load(args.weights, preset)  # refuse what the pipeline would refuse
    print(f"wrote {path}: {current.to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
