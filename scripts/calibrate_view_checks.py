"""Choose the thresholds of the two input checks built on the lung-field network, on training DRRs.

`framing.looks_inverted` (a negative image) and `framing.looks_lateral` (a lateral given as the
frontal) read the lung-field network's output, so their thresholds belong to one network: a new
lung-field network needs them chosen again. This script makes clinical-looking radiographs (frontal
and lateral, `RealismConfig.clinical`) of synthetic chests of the TRAINING patients only (the sample
CT and `DATA/ct/train`), in the geometry of the weights' own card, and prints for each check how
often it fires on the right input and on the wrong one, for a grid of thresholds. The held-out real
radiographs are never used to choose; `test_framing.py` checks the chosen values on them.

With ``--write-card`` the chosen thresholds go into the weights' ``lung_fields.json`` under
``view_checks`` (`models.lung_fields.ViewChecks`), where the checks read them: for the negative
check, the most negatives caught with no right-way-round image flagged; for the lateral check, the
most laterals caught with at most 5 % of frontals flagged, then the fewest frontals; ties go to the
strictest thresholds (a warning that fires on a right input costs the user's trust).

Usage: python scripts/calibrate_view_checks.py WEIGHTS [--data ../shared/data] [--count 20] [--json out.json]
       [--write-card]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from axonct.data.synthetic_anatomy import SyntheticChestGenerator
from axonct.models.lung_fields import load_lung_field_segmenter
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
from axonct.pipeline import framing as fr
from axonct.pipeline.checkpoint import read_card
from axonct.presets import ModelPreset


def training_cts(data: Path) -> list[Path | None]:
    """None stands for the sample CT (LIDC-IDRI-0001, with its label map); then one CT per training
    patient of the data folder's manifest (the first volume listed for a patient)."""
    import csv

    cts: list[Path | None] = [None]
    seen = set()
    manifest = data / "manifest.csv"
    if manifest.is_file():
        for row in csv.DictReader(open(manifest)):
            if row["kind"] == "ct" and row["path"].startswith("ct/train/") and row["patient"] not in seen:
                seen.add(row["patient"])
                cts.append(data / row["path"])
    return cts


def radiographs(weights: Path, data: Path, count: int, seed0: int = 7000):
    """(frontal, lateral) clinical-looking radiographs of ``count`` synthetic chests per training CT."""
    geometry = ModelPreset.from_dict(read_card(weights, "coarse")["config"]).data
    for k, ct in enumerate(training_cts(data)):
        gen = SyntheticChestGenerator(geometry, ct_path=ct)
        for i in range(count):
            seed = seed0 + 1000 * k + i
            drr = torch.from_numpy(gen.generate(seed).render_drr())
            views = simulate_radiograph(drr, RealismConfig.clinical(), seed=seed).numpy()
            yield views[0], views[1]


def both_sides(view: np.ndarray, segmenter) -> float:
    """The smaller side's lung-field share, as `looks_inverted` measures it."""
    m = segmenter.probabilities(view) > 0.5
    half = m.shape[1] // 2
    return float(min(m[:, :half].mean(), m[:, half:].mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--write-card", action="store_true", help="store the chosen thresholds in lung_fields.json")
    args = ap.parse_args()
    segmenter = load_lung_field_segmenter(args.weights)
    if segmenter is None:
        raise SystemExit(f"{args.weights}: no lung-field network")
    shapes = {"frontal": [], "lateral": []}
    sides = []  # (given, negative) for each frontal
    for frontal, lateral in radiographs(args.weights, args.data, args.count):
        for name, image in (("frontal", frontal), ("lateral", lateral)):
            shapes[name].append(fr.view_shape(image, segmenter))
        view = fr.to_model_view(frontal, fr.TRAINING_FRAME_PIXELS)
        sides.append((both_sides(view, segmenter), both_sides(1.0 - view, segmenter)))
    result = {"weights": str(args.weights), "count": len(sides), "lateral": [], "inverted": []}
    for sym, centre in itertools.product((0.3, 0.4, 0.5, 0.6), (0.95, 1.0, 1.05, 1.1, 1.2)):
        rate = {k: float(np.mean([s is not None and s[0] < sym and s[1] > centre for s in v])) for k, v in shapes.items()}
        result["lateral"].append({"symmetry_below": sym, "centre_above": centre, "laterals_flagged": rate["lateral"],
                                  "frontals_flagged": rate["frontal"]})
    for ratio, diff in itertools.product((1.2, 1.5, 2.0), (0.02, 0.05, 0.1)):
        given = float(np.mean([n > ratio * g and n - g > diff for g, n in sides]))
        negative = float(np.mean([g > ratio * n and g - n > diff for g, n in sides]))  # the negative "given"
        result["inverted"].append({"ratio": ratio, "difference": diff, "negatives_flagged": negative,
                                   "right_way_round_flagged": given})
    for row in result["lateral"]:
        print("lateral  sym<{symmetry_below} centre>{centre_above}: laterals {laterals_flagged:.2f}, "
              "frontals {frontals_flagged:.2f}".format(**row))
    for row in result["inverted"]:
        print("inverted ratio {ratio} diff {difference}: negatives {negatives_flagged:.2f}, "
              "right way round {right_way_round_flagged:.2f}".format(**row))
    result["chosen"] = choose(result)
    print("chosen:", json.dumps(result["chosen"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.write_card:
        from axonct.atomic import write_text

        card = args.weights / "lung_fields.json"
        info = json.loads(card.read_text())
        info["view_checks"] = result["chosen"]
        write_text(card, json.dumps(info, indent=2) + "\n")
        print(f"written to {card}")


def choose(result: dict, frontal_budget: float = 0.05) -> dict:
    """The thresholds the module docstring's rules pick from the measured grid."""
    safe = [r for r in result["inverted"] if r["right_way_round_flagged"] == 0.0] or result["inverted"]
    inverted = max(safe, key=lambda r: (r["negatives_flagged"], r["ratio"], r["difference"]))
    allowed = [r for r in result["lateral"] if r["frontals_flagged"] <= frontal_budget] or result["lateral"]
    lateral = max(allowed, key=lambda r: (r["laterals_flagged"], -r["frontals_flagged"], r["centre_above"],
                                          -r["symmetry_below"]))
    return {"inverted_ratio": inverted["ratio"], "inverted_difference": inverted["difference"],
            "lateral_symmetry_below": lateral["symmetry_below"], "lateral_centre_above": lateral["centre_above"]}


if __name__ == "__main__":
    main()
