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
    anatomy = AnatomyConfig()
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
