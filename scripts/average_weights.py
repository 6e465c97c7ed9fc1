"""Average one stage's weights from two fine-tunes of the same start (`axonct.training.averaging`).

The other stages and the sampling card are copied from the first folder; the averaged stage's card
records both parents, the weight, and every case either saw.

Usage: python scripts/average_weights.py FIRST SECOND --out DIR [--stage coarse] [--second-weight 0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from axonct.pipeline.checkpoint import STAGES
from axonct.training.averaging import average_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", default="coarse", choices=STAGES)
    parser.add_argument("--second-weight", type=float, default=0.5)
    args = parser.parse_args()
    print(average_stage(args.first, args.second, args.out, args.stage, args.second_weight))


if __name__ == "__main__":
    main()
