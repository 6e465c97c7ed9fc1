"""`axon synth`: its options and its run, apart from the generator.

The `axon` parser is built on every command, even `axon --help`; importing the generator there would
load torch and SimpleITK first. This module imports only the standard library at the top, and the
engine inside `run_synth`.
"""

from __future__ import annotations

from pathlib import Path


def add_synth_arguments(parser) -> None:
    """Options of `axon synth` (to be registered by cli.py)."""
    parser.add_argument("--out", required=True, help="cache folder to write (resumable)")
    parser.add_argument("--count", type=int, required=True, help="number of synthetic chests")
    parser.add_argument("--seed", type=int, default=0,
                        help="set seed; case i uses a seed derived from (set seed, i). Use different set seeds "
                             "for training and held-out sets")
    parser.add_argument("--preset", default="cpu", help="data preset: tiny, cpu, cpu-wide or paper")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"),
                        help="split that lists all the cases")
    parser.add_argument("--ct", default=None, help="source chest CT (default: the LIDC-IDRI-0001 sample)")
    parser.add_argument("--labels", default=None, help="label map on the CT's grid (default: the sample's)")
    parser.add_argument("--structures", default=None, help="structures.csv naming the labels")
    parser.add_argument("--disjoint-from", action="append", default=[], metavar="CACHE",
                        help="refuse to write cases whose seeds appear in this cache (repeatable)")
    parser.add_argument("--fov-probability", type=float, default=None, help="chance of a circular FOV cut")
    parser.add_argument("--z-extent-probability", type=float, default=None,
                        help="chance of a scan limited to the lungs plus a margin")
    parser.add_argument("--anatomy", default=None, metavar="JSON",
                        help="a JSON object of anatomy ranges to change (names and defaults: "
                             "data/synthetic_anatomy.AnatomyConfig), e.g. {\"scale_ap\": [0.75, 1.05]}")
    parser.add_argument("--gallery", default=None,
                        help="also write a gallery of the first cases (.png or .jpg; never over a file AXON did "
                             "not write)")
    parser.add_argument("--gallery-count", type=int, default=6)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a gallery an earlier AXON run wrote at the same name")


def run_synth(args) -> int:
    """`axon synth`: build a synthetic cache (and optionally a gallery); returns the exit code."""
    from axonct.config import data_preset
    from axonct.data.synthetic_anatomy import AnatomyConfig
    from axonct.data.synthetic_cache import write_synthetic_cache
    from axonct.errors import AxonInputError

    try:
        cfg = data_preset(args.preset)
    except ValueError as exc:
        raise AxonInputError(None, str(exc)) from None
    anatomy = anatomy_from_file(args.anatomy) if args.anatomy else AnatomyConfig()
    for name in ("fov_probability", "z_extent_probability"):
        v = getattr(args, name, None)
        if v is not None:
            if not 0.0 <= v <= 1.0:
                raise AxonInputError(None, f"--{name.replace('_', '-')} must be within [0, 1]")
            setattr(anatomy, name, float(v))
    for p in (args.ct, args.labels, args.structures):
        if p and not Path(p).exists():
            raise AxonInputError(p, "does not exist")
    gallery = _plan_gallery(args)  # checked before any chest is made: a user's file there is refused
    manifest = write_synthetic_cache(args.out, cfg, args.count, args.seed, split=args.split, anatomy=anatomy,
                                     ct_path=args.ct, labels_path=args.labels, structures_path=args.structures,
                                     disjoint_from=args.disjoint_from, progress=True)
    print(f"{len(manifest['cases'])} synthetic cases in {args.out} (split {args.split}, set seed {args.seed})")
    if gallery is not None:
        from axonct.tools.gallery import save_gallery

        with gallery:
            save_gallery(args.out, gallery.path(args.gallery), n=args.gallery_count)
        print(f"gallery: {args.gallery}")
    return 0


def anatomy_from_file(path):
    """The generator's anatomy with the ranges a JSON file changes; a wrong name, shape or value is
    refused naming the file and the field, before any chest is made."""
    import dataclasses
    import json
    import math

    from axonct.data.synthetic_anatomy import AnatomyConfig
    from axonct.errors import AxonInputError

    try:
        changes = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AxonInputError(path, f"is not a readable JSON file: {exc}") from None
    if not isinstance(changes, dict):
        raise AxonInputError(path, "must hold a JSON object of anatomy field names")
    defaults = AnatomyConfig()
    fields = {f.name for f in dataclasses.fields(AnatomyConfig)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise AxonInputError(path, f"names unknown anatomy fields: {', '.join(unknown)}")
    values = {}
    for name, value in changes.items():
        default = getattr(defaults, name)
        numbers = list(value) if isinstance(value, list) else [value]
        if isinstance(default, tuple) != isinstance(value, list) or (
                isinstance(default, tuple) and len(numbers) != len(default)):
            shape = f"a list of {len(default)} numbers" if isinstance(default, tuple) else "a number"
            raise AxonInputError(path, f"{name}: must be {shape} like its default {json.dumps(default)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise AxonInputError(path, f"{name}: must hold finite numbers, not {value!r}")
        if isinstance(default, tuple) and len(numbers) == 2 and numbers[0] > numbers[1]:
            raise AxonInputError(path, f"{name}: a range needs its low end first ({numbers[0]} > {numbers[1]})")
        if name.endswith("probability") and not 0.0 <= numbers[0] <= 1.0:
            raise AxonInputError(path, f"{name}: must be within [0, 1]")
        values[name] = tuple(float(v) for v in numbers) if isinstance(default, tuple) else type(default)(value)
    return dataclasses.replace(defaults, **values)


def _plan_gallery(args):
    """The gallery under the output policy (`Outputs`), or None without --gallery."""
    if not args.gallery:
        return None
    from axonct.io.montage import montage_format
    from axonct.io.output_policy import Outputs

    montage_format(args.gallery)
    outputs = Outputs("synth", overwrite=args.overwrite)
    outputs.file(args.gallery)
    outputs.check(16 << 20)
    return outputs
