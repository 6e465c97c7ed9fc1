"""Give a weights folder's Stage I the "matched" input domain: measure the training views'
grey-value quantiles on a training cache and write them into its coarse card.

For weights trained before the trainer measured them itself, on percentile-normalised views whose
distribution these tables describe (the previous release's demo weights got theirs this way, before
their coarse stage was fine-tuned on matched views). The weights file and its SHA-256 are not
touched; the card records where the tables came from.

    python scripts/measure_input_tables.py WEIGHTS_DIR --data CACHE [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AXONReconstruction"))

from axonct.data.datasets import Augmentation, BatchMaker, CTCache  # noqa: E402
from axonct.atomic import write_text  # noqa: E402
from axonct.pipeline.checkpoint import read_card, stage_paths  # noqa: E402
from axonct.presets import ModelPreset  # noqa: E402
from axonct.training.trainer import INPUT_TABLE_SAMPLES, with_input_tables  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="training cache (axon prepare / axon synth)")
    parser.add_argument("--seed", type=int, default=0, help="training seed whose sample stream is measured")
    args = parser.parse_args(argv)
    card = read_card(args.weights, "coarse")
    preset = ModelPreset.from_dict(card["config"])
    preset.train.seed = args.seed
    preset = dataclasses.replace(preset, coarse=dataclasses.replace(preset.coarse, input_domain="matched",
                                                                       input_tables=()))
    cache = CTCache(args.data, expected=preset.data)
    ids = cache.case_ids("train") or cache.case_ids("all")
    preset = with_input_tables(preset, BatchMaker(cache, ids, preset.sr.factor, Augmentation()))
    card["config"]["coarse"]["input_domain"] = "matched"
    card["config"]["coarse"]["input_tables"] = [list(t) for t in preset.coarse.input_tables]
    card["input_tables_from"] = (f"{INPUT_TABLE_SAMPLES} training views (training augmentation, seed {args.seed}) "
                                 f"of {len(ids)} cases in {args.data.name}; scripts/measure_input_tables.py")
    _, card_path = stage_paths(args.weights, "coarse")
    write_text(card_path, json.dumps(card, indent=2) + "\n")
    ModelPreset.from_dict(read_card(args.weights, "coarse")["config"])  # refuse what loading would refuse
    print(f"wrote {card_path}: coarse input domain 'matched' ({len(ids)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
