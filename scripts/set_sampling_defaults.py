"""Set a weights folder's sampling defaults (inference-only settings) in every stage card.

Sampling settings do not change a single weight, so they may be tuned after training on a
held-out tuning set; this writes the chosen values into the `config` of each `<stage>.json`
(the weights files and their SHA-256 stay as they are). Every card gets the same values, because
loading checks that the stages agree on their config.

    python scripts/set_sampling_defaults.py WEIGHTS_DIR --fine-strength 0.0 [--steps-coarse 20 --steps-fine 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AXONReconstruction"))

from axonct.atomic import write_text  # noqa: E402

STAGES = ("coarse", "controlnet", "sr", "baseline")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--fine-strength", type=float, help="Stage II start strength (0-1)")
    parser.add_argument("--steps-coarse", type=int, help="Stage I sampling steps")
    parser.add_argument("--steps-fine", type=int, help="Stage II sampling steps")
    args = parser.parse_args(argv)
    if args.fine_strength is not None and not 0.0 <= args.fine_strength <= 1.0:
        parser.error("--fine-strength must be in [0, 1]")
    cards = [args.weights / f"{s}.json" for s in STAGES if (args.weights / f"{s}.json").exists()]
    if not cards:
        parser.error(f"{args.weights} holds no stage cards")
    for path in cards:
        card = json.loads(path.read_text())
        cfg = card["config"]
        if args.fine_strength is not None:
            cfg["prior"]["start_strength"] = args.fine_strength
        if args.steps_fine is not None:
            cfg["prior"]["sample_steps"] = args.steps_fine
        if args.steps_coarse is not None:
            cfg["coarse"]["sample_steps"] = args.steps_coarse
        write_text(path, json.dumps(card, indent=2))
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
