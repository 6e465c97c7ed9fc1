"""`axon evaluate --suite DIR`: the default `axon reconstruct` path measured on real held-out data.

Every number the project publishes comes from here, so it runs exactly what users run
(`AxonPipeline.__call__` with default `ReconstructOptions`) on files a user would have:

* **CTs** (``ct/eval``): `axon drr` writes their clean frontal and lateral DRRs (NRRD with the view
  geometry in the header); the pipeline reconstructs from those files, biplanar, frontal-only and
  biplanar with ``--framing none``; each result is scored against the original CT like `axon
  evaluate --pred --gt` (body centroids aligned by translation, on the reconstruction's grid), with
  the mean-CT atlas of the training CTs beside it; and once more from the PNG copies `axon drr`
  writes (no pixel spacing: framed by the lung fields, as an exported film would be).
* **Radiographs with a radiologist's lung mask** (``cxr/eval``): the lung-field network's Dice
  against the mask, the Dice of the reconstruction's lungs projected onto the view, and the chest
  plausibility measures (`axonct.anatomy`), per image.
* **Same-day PA + lateral pairs**: reconstructed biplanar, with the same measures.

The folder follows ``../shared/data``'s layout: ``manifest.csv`` (path, kind ct/cxr/mask, patient,
view, role, pair_id, image_path) and the files it names.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from axonct.errors import AxonInputError
from axonct.io.output_policy import Outputs

FRONTAL_VIEWS = {"PA", "AP", "frontal"}
LATERAL_VIEWS = {"L", "LL", "RL", "lateral"}
CT_VARIANTS = ("AXON biplanar", "AXON frontal-only", "AXON biplanar, --framing none",
               "AXON biplanar from the PNG copies")
"""The default run on `axon drr`'s NRRD views (their header carries the geometry), frontal alone,
unframed, and from the PNG copies `axon drr` writes beside them (no spacing: framed by the lung fields,
as an exported film would be)."""
MONTAGE_WINDOW_HU = (-1000.0, 300.0)


@dataclass
class SuiteCase:
    id: str
    kind: str  # "ct", "radiograph" or "pair"
    files: dict[str, Path]  # ct | frontal (+ lateral) (+ mask)
    patient: str = ""
    role: str = "eval"


@dataclass
class Suite:
    root: Path
    cts: list[SuiteCase] = field(default_factory=list)
    radiographs: list[SuiteCase] = field(default_factory=list)
    pairs: list[SuiteCase] = field(default_factory=list)
    training_cts: list[SuiteCase] = field(default_factory=list)
    held_out: set[Path] = field(default_factory=set)  # every evaluation CT, resolved: never in the atlas

    def limited(self, max_cases: int | None) -> "Suite":
        if max_cases is None:
            return self
        n = int(max_cases)
        return Suite(self.root, self.cts[:n], self.radiographs[:n], self.pairs[:n], self.training_cts, self.held_out)

    def cases(self) -> list[SuiteCase]:
        return self.cts + self.radiographs + self.pairs


def read_suite(root: str | Path) -> Suite:
    """The evaluation cases a data folder's manifest lists (radiographs: frontal views with a lung
    mask; pairs: a frontal and a lateral sharing a pair_id)."""
    root = Path(root)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise AxonInputError(root, "has no manifest.csv; --suite needs a folder laid out like ../shared/data "
                                   "(manifest.csv, ct/eval, cxr/eval)")
    try:
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AxonInputError(manifest, f"cannot be read as CSV ({exc})") from None
    missing = {"path", "kind", "role"} - set(rows[0] if rows else {})
    if missing:
        raise AxonInputError(manifest, f"lacks the column(s) {', '.join(sorted(missing))}")
    suite = Suite(root)
    masks = {r.get("image_path", ""): root / r["path"] for r in rows if r["kind"] == "mask" and r.get("image_path")}
    by_pair: dict[str, dict] = {}
    for r in rows:
        path = root / r["path"]
        case_id = Path(r["path"]).name.split(".")[0]
        if r["kind"] == "ct":
            case = SuiteCase(case_id, "ct", {"ct": path}, r.get("patient", ""), r["role"])
            (suite.cts if r["role"] == "eval" else suite.training_cts).append(case)
        elif r["kind"] == "cxr" and r["role"] == "eval":
            view = r.get("view", "")
            if view in FRONTAL_VIEWS:
                files = {"frontal": path}
                if r["path"] in masks:
                    files["mask"] = masks[r["path"]]
                    suite.radiographs.append(SuiteCase(case_id, "radiograph", files, r.get("patient", "")))
            if r.get("pair_id"):
                slot = "frontal" if view in FRONTAL_VIEWS else "lateral" if view in LATERAL_VIEWS else None
                if slot:
                    by_pair.setdefault(r["pair_id"], {"patient": r.get("patient", "")})[slot] = path
                    if slot == "frontal" and r["path"] in masks:
                        by_pair[r["pair_id"]]["mask"] = masks[r["path"]]
    for pair_id, files in sorted(by_pair.items()):
        if "frontal" in files and "lateral" in files:
            patient = files.pop("patient")
            suite.pairs.append(SuiteCase(pair_id, "pair", files, patient))
    suite.held_out = {c.files["ct"].resolve() for c in suite.cts}
    if not suite.cases():
        raise AxonInputError(manifest, "lists no evaluation CT (kind ct, role eval) and no evaluation radiograph")
    return suite


def evaluate_suite(root: str | Path, out: str | Path, weights: str | Path | None = None, device: str = "auto",
                   precision: str = "auto", steps: int | None = None, seed: int = 0, max_cases: int | None = None,
                   overwrite: bool = False, progress=None, log=print) -> dict:
    """Run the suite; writes ct_cases.csv, radiographs.csv, pairs.csv, summary.json, summary.md,
    montages/<case>.png and the CT cases' default reconstructions (volumes/<case>_biplanar.nrrd,
    _frontal_only.nrrd, _biplanar_png.nrrd) under ``out`` (all or none). A case that cannot be read is a row with its error."""
    from axonct.options import ReconstructOptions
    from axonct.pipeline.loading import default_weights_dir
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.runtime import resolve_device

    if max_cases is not None and int(max_cases) < 1:
        raise AxonInputError(None, f"--max-cases must be at least 1 (got {max_cases})")
    suite = read_suite(root).limited(max_cases)
    weights = Path(weights) if weights else default_weights_dir()
    out = Path(out)
    outputs = Outputs("evaluate", overwrite=overwrite)
    outputs.folder(out)
    names = ["ct_cases.csv", "radiographs.csv", "pairs.csv", "summary.json", "summary.md"]
    names += [f"montages/{case.id}.png" for case in suite.cases()]
    names += [f"volumes/{name}" for case in suite.cts for name in ct_volume_names(case.id).values()]
    for name in names:
        outputs.file(out / name)
    outputs.check(len(names) * (2 << 20))
    pipeline = AxonPipeline.load(weights, resolve_device(device), precision=precision)
    options = ReconstructOptions(steps=steps, seed=seed)  # the defaults of `axon reconstruct`
    run = _SuiteRun(pipeline, options, progress, log)
    ct_rows, radiograph_rows, pair_rows = [], [], []
    with outputs:
        atlas = run.atlas(suite) if suite.cts else None
        for case in suite.cts:
            ct_rows += run.ct_case(case, atlas, outputs.path(out / "montages" / f"{case.id}.png"),
                                   {k: out / "volumes" / v for k, v in ct_volume_names(case.id).items()}, outputs)
        for case in suite.radiographs:
            radiograph_rows.append(run.radiograph_case(case, None, outputs.path(out / "montages" / f"{case.id}.png")))
        for case in suite.pairs:
            pair_rows.append(run.radiograph_case(case, case.files["lateral"],
                                                 outputs.path(out / "montages" / f"{case.id}.png")))
        summary = summarise_suite(ct_rows, radiograph_rows, pair_rows)
        summary.update({"suite": str(Path(root)), "weights": str(weights), "device": str(pipeline.device),
                        "precision": pipeline.precision.to_dict(), "options": options.to_dict(),
                        "max_cases": max_cases, "atlas": None if atlas is None else atlas[1],
                        "scoring": "HU clipped to [-1024, 1476]; body centroids aligned by translation; "
                                   "on the reconstruction's grid (`axon evaluate --pred --gt`)"})
        for name, rows in (("ct_cases.csv", ct_rows), ("radiographs.csv", radiograph_rows), ("pairs.csv", pair_rows)):
            _write_csv(outputs.path(out / name), rows)
        outputs.path(out / "summary.json").write_text(json.dumps(summary, indent=2))
        outputs.path(out / "summary.md").write_text(suite_tables(summary))
    return summary


class _SuiteRun:
    """One loaded pipeline and the options every case runs with."""

    def __init__(self, pipeline, options, progress, log):
        self.pipeline, self.options, self.progress, self.log = pipeline, options, progress, log
        self.data = pipeline.preset.data
        record = pipeline.cards.get("coarse", {}).get("trained_on", {})
        self.seen_names = {Path(s).name for s in record.get("synthetic_from", [])} | set(record.get("cases", []))

    def reconstruct(self, frontal, lateral, **changes):
        import dataclasses

        return self.pipeline(frontal, lateral, dataclasses.replace(self.options, **changes), progress=self.progress)

    # ------------------------------------------------------------------ CTs
    def atlas(self, suite: Suite):
        """The mean-CT atlas: the mean model cube of one CT per training patient (and the sample
        CT when it is on this machine), all of them data the weights may train on."""
        from axonct.io.ct import read_ct
        from axonct.io.ct_preprocess import ct_to_model

        sources, seen_patients = [], set()
        for case in suite.training_cts:
            if case.patient not in seen_patients:
                seen_patients.add(case.patient)
                sources.append(case.files["ct"])
        try:
            from axonct.io.sample_data import sample_ct_path

            sources.append(Path(sample_ct_path(fetch=False)))
        except Exception:  # noqa: BLE001  (no sample CT on this machine: the atlas does without it)
            pass
        sources = [p for p in sources if p.resolve() not in suite.held_out]
        cubes = []
        for path in sources:
            try:
                cubes.append(ct_to_model(read_ct(path), self.data.grid, remove_bed=self.data.remove_bed).array)
            except AxonInputError as exc:
                self.log(f"atlas: skipped {exc}")
        if not cubes:
            return None
        return np.mean(cubes, axis=0), f"mean model cube of {len(cubes)} training CTs ({', '.join(p.name for p in sources)})"

    def ct_case(self, case: SuiteCase, atlas, montage: Path, volumes: dict[str, Path], outputs) -> list[dict]:
        """Every variant and the atlas against the CT; the default runs' volumes are kept (``volumes``,
        staged in ``outputs``) so anyone can score them again or look at them."""
        import SimpleITK as sitk

        from axonct.io.ct import read_ct
        from axonct.io.ct_preprocess import ModelVolume, hu_to_unit
        from axonct.io.volume_export import write_volume
        from axonct.tools.compare import (align_ground_truth, flat_metrics, save_comparison_montage,
                                          score_against_ground_truth)
        from axonct.tools.drr_export import export_drrs

        ct_path = case.files["ct"]
        base = {"case": case.id, "patient": case.patient,
                "case_is": "seen in training" if (ct_path.name in self.seen_names or case.patient in self.seen_names)
                else "held out"}
        tmp_dir = tempfile.TemporaryDirectory(prefix="axon-suite-")
        try:
            gt = read_ct(ct_path)
            export_drrs(ct_path, tmp_dir.name, self.data, realism=None, save_cube=False)  # what `axon drr` writes
        except AxonInputError as exc:
            tmp_dir.cleanup()
            self.log(f"{case.id}: {exc}")
            _error_montage(montage, str(exc))
            for path in volumes.values():  # planned: an empty volume says the case failed
                write_volume(sitk.Image([8, 8, 8], sitk.sitkFloat32) - 1024, path, "AXON suite: case failed", outputs)
            return [{**base, "method": "-", "status": f"error: {exc}"}]
        rows, preds = [], {}
        with tmp_dir as tmp:
            folder = Path(tmp)
            frontal, lateral = folder / "frontal.nrrd", folder / "lateral.nrrd"
            runs = {"AXON biplanar": (frontal, lateral, {}), "AXON frontal-only": (frontal, None, {}),
                    "AXON biplanar, --framing none": (frontal, lateral, {"framing": "none"}),
                    "AXON biplanar from the PNG copies": (folder / "frontal.png", folder / "lateral.png", {})}
            for method in CT_VARIANTS:
                front, lat, changes = runs[method]
                result = self.reconstruct(front, lat, **changes)
                image = result.image()
                scored = score_against_ground_truth(image, gt)
                a = result.checks["anatomy"]
                rows.append({**base, "method": method, "status": "ok", "framing": _framing_text(result),
                             "size_factor": round(result.framing.size_factor, 3), **flat_metrics(scored),
                             "shift_mm": _round_list(scored["alignment"]["shift_mm"]), **_plausibility(a),
                             "warnings": " | ".join(result.warnings)})
                preds[method] = image
                if method in volumes:
                    write_volume(image, volumes[method], f"AXON {method}", outputs)
                self.log(f"{case.id} {method}: PSNR {scored['honest']['psnr']:.2f} dB, SSIM {scored['honest']['ssim']:.3f}")
        if atlas is not None:
            image = ModelVolume(atlas[0], (0.0, 0.0, 0.0), self.data.grid).to_hu_image()
            scored = score_against_ground_truth(image, gt)
            rows.append({**base, "method": "mean-CT atlas", "status": "ok", **flat_metrics(scored),
                         "shift_mm": _round_list(scored["alignment"]["shift_mm"])})
            preds["mean-CT atlas"] = image
        reference = preds["AXON biplanar"]
        truth = align_ground_truth(reference, gt)
        save_comparison_montage(truth.gt_unit, {k: hu_to_unit(_on_grid(v, reference), truth.window)
                                                for k, v in preds.items()}, montage)
        return rows

    # ------------------------------------------------------------------ radiographs
    def radiograph_case(self, case: SuiteCase, lateral: Path | None, montage: Path) -> dict:
        from axonct.guidance.lung_fields import projected_lung_air
        from axonct.io.ct_preprocess import unit_to_hu
        from axonct.io.radiograph import read_radiograph

        row = {"case": case.id, "patient": case.patient, "file": str(case.files["frontal"]),
               "lateral": str(lateral) if lateral else "", "case_is": "held out"}
        try:
            frontal_rg = read_radiograph(case.files["frontal"], view="frontal")
            lateral_rg = read_radiograph(lateral, view="lateral") if lateral else None
            result = self.reconstruct(frontal_rg, lateral_rg)
        except AxonInputError as exc:
            self.log(f"{case.id}: {exc}")
            _error_montage(montage, str(exc))
            return {**row, "status": f"error: {exc}"}
        frame = result.framing.views["frontal"]
        row.update({"status": "ok", "framing": frame.method, "size_factor": round(result.framing.size_factor, 3)})
        mask_view, notes = None, []
        if "mask" in case.files:
            try:
                mask_view = radiologist_mask_in_view(case.files["mask"], frame, self.data.geometry.detector_pixels,
                                                     frontal_rg.shape)
            except AxonInputError as exc:  # the image was reconstructed; only its Dice is missing
                self.log(f"{case.id}: {exc}")
                notes.append(f"mask: {exc}")
        projected = projected_lung_air(unit_to_hu(result.mean, self.data.grid), self.data)[0]
        network = None if result.lung_fields is None else result.lung_fields[0] > 0.5
        from axonct.metrics import dice

        row["network_dice"] = None if (mask_view is None or network is None) else round(dice(network, mask_view), 4)
        row["reconstruction_dice"] = None if mask_view is None else round(dice(projected, mask_view), 4)
        row.update(_plausibility(result.checks["anatomy"]))
        row["warnings"] = " | ".join(notes + result.warnings)
        _radiograph_montage(case.id, result, network, mask_view, projected, montage, self.data.grid)
        self.log(f"{case.id}: network Dice {row['network_dice']}, reconstruction Dice {row['reconstruction_dice']}, "
                 f"plausible {row['plausible']}")
        return row


def _framing_text(result) -> str:
    return ", ".join(f"{name} {view.method}" for name, view in result.framing.views.items())


def ct_volume_names(case_id: str) -> dict[str, str]:
    """The volumes a CT case keeps, by method."""
    return {"AXON biplanar": f"{case_id}_biplanar.nrrd", "AXON frontal-only": f"{case_id}_frontal_only.nrrd",
            "AXON biplanar from the PNG copies": f"{case_id}_biplanar_png.nrrd"}


def radiologist_mask_in_view(mask_path: Path, frame, size: int, image_shape: tuple[int, int]) -> np.ndarray:
    """A lung mask PNG (0 background, 1 right lung, 2 left lung; drawn on the original image) carried
    into the framed view the way the image was, as booleans. ``image_shape``: the radiograph as read
    (large images are reduced while reading; the mask follows)."""
    from PIL import Image

    from axonct.transforms.window import window_image

    try:
        with Image.open(mask_path) as im:
            grey = im.convert("L")
            if grey.size != (image_shape[1], image_shape[0]):
                grey = grey.resize((image_shape[1], image_shape[0]), Image.NEAREST)
            mask = np.asarray(grey) > 0
    except (OSError, ValueError) as exc:
        raise AxonInputError(mask_path, f"cannot be read as a mask image ({exc})") from None
    view, _ = window_image(mask.astype(np.float32), frame.center_rc, frame.image_px_per_view_px, size, 0.0)
    return view > 0.5


PLAUSIBILITY_KEYS = ("enclosed_air_fraction", "air_left_share", "open_wall_air_fraction", "chest_wall_closed",
                     "plausible")


def _plausibility(anatomy: dict) -> dict:
    out = {k: anatomy.get(k) for k in PLAUSIBILITY_KEYS}
    out["plausibility_failures"] = " | ".join(anatomy.get("plausibility_failures", []) or [])
    return out


def summarise_suite(ct_rows: list[dict], radiograph_rows: list[dict], pair_rows: list[dict]) -> dict:
    """Means per CT method; Dice mean and worst and plausibility counts for the radiographs and pairs."""
    summary: dict = {"ct": {}, "radiographs": _radiograph_summary(radiograph_rows), "pairs": _radiograph_summary(pair_rows)}
    ok = [r for r in ct_rows if r.get("status") == "ok"]
    for method in dict.fromkeys(r["method"] for r in ok):
        rs = [r for r in ok if r["method"] == method]
        summary["ct"][method] = {"cases": len(rs), **{
            key: round(float(np.mean([r[key] for r in rs])), 4) for key in ("psnr", "ssim", "psnr_x2ct", "ssim_x2ct", "mae_hu")}}
        summary["ct"][method]["per_case_psnr"] = {r["case"]: round(r["psnr"], 2) for r in rs}
    summary["ct_cases_seen_in_training"] = sorted({r["case"] for r in ok if r["case_is"] != "held out"})
    return summary


def _radiograph_summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("status") == "ok"]
    out: dict = {"cases": len(rows), "reconstructed": len(ok), "errors": len(rows) - len(ok)}
    for key in ("network_dice", "reconstruction_dice"):
        vals = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        out[key] = {"mean": round(float(np.mean(vals)), 4), "worst": round(float(np.min(vals)), 4),
                    "worst_case": min((r for r in ok if isinstance(r.get(key), (int, float))), key=lambda r: r[key])["case"],
                    "n": len(vals)} if vals else None
    out["plausible"] = sum(bool(r.get("plausible")) for r in ok)
    out["chest_wall_closed"] = sum(bool(r.get("chest_wall_closed")) for r in ok)
    out["plausible_fraction"] = round(out["plausible"] / len(ok), 4) if ok else None
    return out


def suite_tables(summary: dict) -> str:
    """The suite as Markdown tables (README and the model card quote them)."""
    lines = ["Real evaluation CTs (DRRs written by `axon drr`, reconstructed by the default `axon reconstruct` "
             "path; scored like `axon evaluate --pred --gt`):", "",
             "| method | cases | PSNR dB | SSIM | PSNR dB (X2CT conv.) | SSIM (X2CT conv.) | MAE HU | per case PSNR |",
             "|---|---|---|---|---|---|---|---|"]
    for method, m in summary["ct"].items():
        per_case = ", ".join(f"{k} {v:.2f}" for k, v in m["per_case_psnr"].items())
        lines.append(f"| {method} | {m['cases']} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['psnr_x2ct']:.2f} | "
                     f"{m['ssim_x2ct']:.3f} | {m['mae_hu']:.0f} | {per_case} |")
    lines += ["", "Real radiographs (frontal alone; PA + lateral pairs biplanar):", "",
              "| set | images | reconstructed | lung-field network Dice, mean (worst) | reconstruction's lungs Dice, "
              "mean (worst) | plausible chests | closed chest walls |", "|---|---|---|---|---|---|---|"]
    for name, label in (("radiographs", "frontal with radiologist mask"), ("pairs", "PA + lateral pairs")):
        s = summary[name]

        def cell(d):
            return "n/a" if not d else f"{d['mean']:.3f} ({d['worst']:.3f}, {d['worst_case']})"
        n = max(s["reconstructed"], 1)
        lines.append(f"| {label} | {s['cases']} | {s['reconstructed']} | {cell(s['network_dice'])} | "
                     f"{cell(s['reconstruction_dice'])} | {s['plausible']}/{s['reconstructed']} "
                     f"({100 * s['plausible'] / n:.0f} %) | {s['chest_wall_closed']}/{s['reconstructed']} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    fieldnames = list(dict.fromkeys(k for r in rows for k in r)) or ["case"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)


def _round_list(values) -> list[float]:
    return [round(float(v), 2) for v in values]


def _on_grid(image, reference):
    """``image`` resampled onto ``reference``'s grid (a montage needs one grid; the atlas and the
    framing-none run may differ from the default run's)."""
    import SimpleITK as sitk

    same = image.GetSize() == reference.GetSize() and np.allclose(image.GetSpacing(), reference.GetSpacing()) \
        and np.allclose(image.GetOrigin(), reference.GetOrigin())
    img = image if same else sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1024.0)
    return sitk.GetArrayFromImage(img)


def _radiograph_montage(name, result, network, mask_view, projected, path: Path, grid) -> None:
    """Framed input | network lung fields | radiologist mask | reconstruction's lungs | mid slices."""
    from axonct.io.ct_preprocess import unit_to_hu
    from axonct.io.montage import orthogonal_slices, save_montage, to_uint8

    views = result.reconstruction.views
    empty = np.zeros_like(views[0])
    row = [(name[:22], to_uint8(views[0])),
           ("network lung fields", to_uint8((empty if network is None else network).astype(np.float32), 0, 1)),
           ("radiologist mask", to_uint8((empty if mask_view is None else mask_view).astype(np.float32), 0, 1)),
           ("recon lungs, projected", to_uint8(projected.astype(np.float32), 0, 1))]
    if float(result.reconstruction.view_mask[1]) > 0:
        row.append(("lateral", to_uint8(views[1])))
    lo, hi = MONTAGE_WINDOW_HU
    row += [(k, to_uint8(v, lo, hi)) for k, v in orthogonal_slices(unit_to_hu(result.mean, grid)).items()]
    save_montage([row], path)


def _error_montage(path: Path, text: str) -> None:
    """A case that could not be run still gets its (planned) montage: one tile naming the problem."""
    from axonct.io.montage import save_montage

    save_montage([[(f"error: {text}"[:60], np.zeros((64, 64), np.uint8))]], path)
