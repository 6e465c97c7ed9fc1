"""Measure the chest plausibility measures (`axonct.anatomy`) on real chest CTs and check them against
the current ranges: every real CT must pass.

Each CT is brought onto the cpu model grid exactly as the product does (`ct_to_model`, `unit_to_hu`)
and measured with `chest_metrics`. Prints one row per CT and exits 1 if any fails.

    python scripts/calibrate_anatomy.py [CT_OR_FOLDER ...] [--preset cpu]

Without arguments: every CT under ../shared/data/ct/{train,eval} (when present) and the sample CT
(LIDC-IDRI-0001). Data only measured here; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AXONReconstruction"))

from axonct.anatomy import chest_metrics  # noqa: E402

CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def default_cts() -> list[Path]:
    """The real CTs of ../shared/data (train and eval) and the sample CT, those that exist."""
    paths = [p for role in ("train", "eval") for p in sorted((SHARED_DATA / "ct" / role).glob("*.nii.gz"))]
    try:
        from axonct.io.sample_data import sample_ct_path

        paths.append(Path(sample_ct_path(fetch=True)))
    except Exception as exc:  # no network and no cached copy
        print(f"sample CT not available: {exc}", file=sys.stderr)
    return paths


def expand(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(CT_SUFFIXES))
        else:
            out.append(p)
    return out


def measure(path: Path, preset: str = "cpu") -> dict:
    """`chest_metrics` of one CT on the model grid of ``preset``, as the product brings it there."""
    from axonct.config import data_preset
    from axonct.io.ct import read_ct
    from axonct.io.ct_preprocess import ct_to_model, unit_to_hu

    grid = data_preset(preset).grid
    mv = ct_to_model(read_ct(path), grid)
    return chest_metrics(unit_to_hu(mv.array, grid), grid.spacing_mm)


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cts", nargs="*",
                        help="CT files or folders of them (default: ../shared/data and the sample CT)")
    parser.add_argument("--preset", default="cpu", help="data preset whose grid the CTs are brought onto")
    args = parser.parse_args(argv)
    paths = expand(args.cts) if args.cts else default_cts()
    if not paths:
        print("no CTs to measure", file=sys.stderr)
        return 2
    header = (f"{'file':40s} {'air %':>6s} {'left':>6s} {'open %':>7s} {'box':>6s} {'str-F':>6s} {'str-L':>6s} "
              f"{'body mL':>8s}  verdict")
    print(header)
    failed = 0
    for path in paths:
        name = path.name[:40]
        try:
            m = measure(path, args.preset)
        except Exception as exc:  # an unreadable file is a failure of this run, reported per row
            print(f"{name:40s} error: {exc}")
            failed += 1
            continue
        streak = m["ray_streak_ratio"]
        verdict = "pass" if m["plausible"] else "FAIL: " + ", ".join(m["plausibility_failures"])
        failed += not m["plausible"]
        print(f"{name:40s} {100 * m['enclosed_air_fraction']:6.1f} {_fmt(m['air_left_share'], '6.3f')} "
              f"{100 * m['open_wall_air_fraction']:7.2f} {_fmt(m['body_box_fill'], '6.3f')} "
              f"{_fmt(streak['frontal'], '6.2f')} {_fmt(streak['lateral'], '6.2f')} {m['body_ml']:8.0f}  {verdict}")
    print(f"{len(paths) - failed}/{len(paths)} pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
