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

from axonct.app.arguments import COMMANDS, OneLineParser, add_command


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


def reconstruct_options(args) -> "options.ReconstructOptions":
    """A command's reconstruction options as the one options object (validated): the option flags it
    has, or `axon reconstruct --options FILE`, which gives them all and so refuses a flag beside it."""
    given = {name: getattr(args, name) for name in options.OPTIONS if hasattr(args, name)}
    document = getattr(args, "options", None)
    if document:
        if given:
            flags = ", ".join(options.OPTIONS[name].flag for name in given)
            raise AxonInputError(None, f"--options {document} gives every reconstruction option; leave out {flags}")
        return options.ReconstructOptions.from_json(document)
    return options.ReconstructOptions(**given).validate()


def cmd_reconstruct(args) -> int:
    from axonct.app.reconstruct_job import ReconstructRequest, main_reconstruct

    return main_reconstruct(lambda: ReconstructRequest(
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
                                      lung_fields=args.lung_fields, framing=args.framing,
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
    m = run_demo(args.out, weights=args.weights, views=args.views, options=reconstruct_options(args),
                 progress=progress, overwrite=args.overwrite)
    print(f"demo: {m['case']['patient_id']} ({m['case']['status']}), {m['views']} DRR views -> "
          f"reconstruction in {m['seconds']['total']} s")
    print(f"  honest 3D: PSNR {m['honest']['psnr']:.2f} dB, SSIM {m['honest']['ssim']:.3f}; "
          f"X2CT convention: PSNR {m['x2ct']['psnr']:.2f} dB, SSIM {m['x2ct']['ssim']:.3f}; "
          f"MAE {m['mae_hu']:.0f} HU")
    print(f"  device {m['device']}, precision {m['precision']['name']} ({m['precision']['reason']})")
    print(f"  files in {args.out}: reconstruction.nrrd, ground_truth_model_grid.nrrd, montage.png, metrics.json")
    return 0


def cmd_synth(args) -> int:
    from axonct.app.synth_command import run_synth

    return run_synth(args)


def cmd_sample_case(args) -> int:
    from axonct.app.sample_case import main_sample_case

    return main_sample_case(args.out, allow_download=not args.no_download)


def cmd_app(args) -> int:
    from axonweb.command import run_app  # the web app (the app extra): trame and Slicer's views load here only

    return run_app(args)


COMMAND_FUNCTIONS = {"demo": cmd_demo, "drr": cmd_drr, "prepare": cmd_prepare, "train": cmd_train,
                     "reconstruct": cmd_reconstruct, "evaluate": cmd_evaluate, "benchmark": cmd_benchmark,
                     "gallery": cmd_gallery, "synth": cmd_synth, "fetch-data": cmd_fetch_data,
                     "sample-case": cmd_sample_case}


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser (`axonct.app.arguments`), each bound to its function here."""
    parser = OneLineParser(prog="axon", description="AXON: CT reconstruction from chest radiographs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        add_command(sub, name).set_defaults(func=COMMAND_FUNCTIONS[name])
    try:  # `axon app`, defined beside the web app (absent where the engine ships without it: the Slicer extension)
        from axonweb.command import DESCRIPTION, SUMMARY, app_arguments
    except ImportError:
        pass
    else:
        p = sub.add_parser("app", help=SUMMARY, description=DESCRIPTION)
        app_arguments(p)
        p.set_defaults(func=cmd_app)
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
