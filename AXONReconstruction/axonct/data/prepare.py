"""`axon prepare`: a folder of CTs -> a training cache of (CT cube, clean DRR views) pairs.

The cache's format is `cache_schema`. Each case is written to a temporary folder and renamed when
complete, so an interrupted run leaves no half-written case and a rerun skips what is finished. Realism augmentation is applied at training
time to the stored clean line integrals, so every epoch sees new noise and processing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from axonct.config import DataConfig
from axonct.data import cache_schema as schema
from axonct.errors import STORAGE_ERRNOS, AxonInputError, AxonRunError
from axonct.atomic import remove_partials
from axonct.io.output_policy import RunFolder

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
log = logging.getLogger("axonct.data.prepare")


@dataclass
class CaseSource:
    case_id: str
    path: str
    patient_id: str


def _is_volume_file(p: Path) -> bool:
    name = p.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def read_patient_table(path: str | Path) -> dict[str, str]:
    """file name -> patient ID from a CSV with ``path`` and ``patient`` columns (e.g. a data
    folder's manifest.csv): volumes of one patient (breathing phases, repeat scans) stay in one split."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise AxonInputError(path, "does not exist (--patients needs a CSV with path and patient columns)")
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
        table = {Path(r["path"].strip()).name: r["patient"].strip() for r in rows if (r.get("path") or "").strip()}
    except (KeyError, AttributeError, UnicodeDecodeError, csv.Error) as exc:
        raise AxonInputError(path, f"is not a CSV with path and patient columns ({exc})") from None
    if not table or not all(table.values()):
        raise AxonInputError(path, "names no patient for some rows (--patients needs path and patient on every row)")
    return table


def discover_cases(paths: list[str | Path], patients: dict[str, str] | None = None
                   ) -> tuple[list[CaseSource], list[dict]]:
    """Every CT volume file and every CT DICOM series under the given paths (one case each);
    ``patients`` (file name -> patient ID) overrides the patient read from a file's name."""
    from axonct.io.ct import find_ct_series

    found: list[tuple[str, str]] = []  # (path, patient_id)
    problems: list[dict] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            problems.append({"source": str(p), "error": f"{p}: does not exist"})
            continue
        if p.is_file():
            found.append((str(p), _patient_from_name(p)))
            continue
        for f in sorted(p.rglob("*")):
            if f.is_file() and _is_volume_file(f):
                found.append((str(f), _patient_from_name(f)))
        try:
            series = find_ct_series(p)
        except AxonInputError:
            series = []
        seen_folders = set()
        for s in series:
            if s.modality != "CT" or str(s.folder) in seen_folders:
                continue
            seen_folders.add(str(s.folder))
            found.append((str(s.folder), s.patient_id or _patient_from_name(Path(s.folder))))
    if not found and not problems:
        where = ", ".join(map(str, paths))
        problems.append({"source": where, "error": f"{where}: no CT volumes or CT DICOM series found"})
    cases, used = [], set()
    if patients:
        found = [(path, patients.get(Path(path).name, patient)) for path, patient in found]
    for path, patient in found:
        case_id = _safe_id(patient)
        if case_id in used:
            case_id = f"{case_id}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        used.add(case_id)
        cases.append(CaseSource(case_id, path, patient))
    return cases, problems


_LIDC = re.compile(r"LIDC-IDRI-\d+", re.IGNORECASE)


def _patient_from_name(p: Path) -> str:
    for part in reversed(p.parts):
        m = _LIDC.search(part)
        if m:
            return m.group(0).upper()
    name = p.name
    for s in VOLUME_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def patient_key(text: str) -> str:
    """Normalise a split-list line or a patient ID (X2CT lists hold e.g. 'LIDC-IDRI-0001.2000...')."""
    m = _LIDC.search(text)
    return m.group(0).upper() if m else text.strip()


def read_id_list(path: str | Path) -> list[str]:
    lines = Path(path).read_text().splitlines()
    return [patient_key(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_options(out: Path, workers: int, val_fraction: float, test_fraction: float,
                  lists: dict[str, str | Path | None]) -> dict[str, list[str] | None]:
    """Refuse impossible options before anything is written; returns the split lists, read."""
    if out.exists() and not out.is_dir():
        raise AxonInputError(out, "is a file; --out needs a cache folder")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise AxonInputError(None, f"--workers must be a whole number of at least 1 (got {workers})")
    for option, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not (np.isfinite(value) and 0.0 <= value < 1.0):
            raise AxonInputError(None, f"{option} must be at least 0 and below 1 (got {value:g})")
    if val_fraction + test_fraction >= 1.0:
        raise AxonInputError(None, f"--val-fraction + --test-fraction must be below 1 (got {val_fraction:g} + "
                                   f"{test_fraction:g}); nothing would be left to train on")
    read = {}
    for name, path in lists.items():
        if path is None:
            read[name] = None
            continue
        option, path = f"--{name}-list", Path(path)
        if not path.exists():
            raise AxonInputError(path, f"does not exist ({option} needs a text file, one patient ID a line)")
        if path.is_dir():
            raise AxonInputError(path, f"is a folder ({option} needs a text file, one patient ID a line)")
        try:
            read[name] = read_id_list(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise AxonInputError(path, f"cannot be read as a text list of patient IDs ({option}): {exc}") from None
        if not read[name]:
            raise AxonInputError(path, f"holds no patient IDs ({option} needs one patient ID a line)")
    return read


RESUME_HINT = ("this cache cannot be resumed; use another --out folder, or delete manifest.json to rebuild it "
               "from the finished cases (same preset only)")


def make_splits(
    patient_ids: list[str],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_list: list[str] | None = None,
    test_list: list[str] | None = None,
    val_list: list[str] | None = None,
) -> dict[str, list[str]]:
    """Patient-level split: seeded fractions, or published lists (val carved from train if absent)."""
    patients = sorted(set(patient_ids))
    rng = random.Random(seed)
    if train_list is not None or test_list is not None:
        train_set, test_set = set(train_list or []), set(test_list or [])
        val_set = set(val_list or [])
        train = [p for p in patients if patient_key(p) in train_set and patient_key(p) not in val_set]
        test = [p for p in patients if patient_key(p) in test_set]
        val = [p for p in patients if patient_key(p) in val_set]
        if val_list is None and train:
            rng.shuffle(train)
            n_val = int(round(len(train) * val_fraction))
            val, train = sorted(train[:n_val]), sorted(train[n_val:])
        listed = set(train) | set(test) | set(val)
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test),
                "unassigned": [p for p in patients if p not in listed]}
    order = patients[:]
    rng.shuffle(order)
    n_test = int(round(len(order) * test_fraction))
    n_val = int(round(len(order) * val_fraction))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test), "unassigned": []}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _prepare_one(source: dict, case_dir: str, cfg_dict: dict, hu_offset: float = 0.0) -> dict:
    """Runs in a worker: one case, all or nothing."""
    from axonct.data.training_pair import make_training_pair

    t0 = time.time()
    try:
        cfg = DataConfig.from_dict(cfg_dict)
        pair = make_training_pair(source["path"], cfg, hu_offset=hu_offset)
        info = {
            "case_id": source["case_id"],
            "patient_id": source["patient_id"],
            "source": source["path"],
            "cube_center_lps_mm": list(pair.volume.center_lps),
            "views": list(cfg.views),
            "modality": pair.meta.get("modality"),
            "seconds": round(time.time() - t0, 2),
        }
        if hu_offset:
            info["hu_offset"] = hu_offset
        schema.write_case(case_dir, pair.volume.array, pair.drr, info)
        return {"status": "done", **info}
    except OSError as exc:
        if exc.errno in STORAGE_ERRNOS:  # the disk, not the case: every later case would fail the same way
            raise
        return _failed(source, exc)
    except Exception as exc:  # a bad case must not stop the run
        return _failed(source, exc)


def _failed(source: dict, exc: Exception) -> dict:
    message = str(exc) if isinstance(exc, AxonInputError) else f"{type(exc).__name__}: {exc}"
    return {"status": "failed", "case_id": source["case_id"], "source": source["path"], "error": message,
            "traceback": None if isinstance(exc, AxonInputError) else traceback.format_exc()}


def prepare_cache(
    inputs: list[str | Path],
    out: str | Path,
    cfg: DataConfig,
    workers: int = 1,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    train_list: str | Path | None = None,
    test_list: str | Path | None = None,
    val_list: str | Path | None = None,
    progress: bool = True,
    hu_offset: float = 0.0,
    patients: str | Path | None = None,
) -> dict:
    """``hu_offset`` is added to CTs stored as HU+1024 without a rescale (see `ct_io.read_ct_with_meta`);
    ``patients``: a CSV naming each file's patient (`read_patient_table`)."""
    out = Path(out)
    patient_table = read_patient_table(patients) if patients is not None else None
    id_lists = check_options(out, workers, val_fraction, test_fraction,
                             {"train": train_list, "test": test_list, "val": val_list})
    resuming = (out / schema.MANIFEST_FILE).exists()
    old = schema.read_manifest(out, corrupt_hint=RESUME_HINT) if resuming else None
    if old is not None and not schema.same_config(old, cfg):
        raise AxonInputError(out, "this cache was prepared with a different grid/geometry config; "
                                  "use another --out folder or the same preset")
    with RunFolder("prepare", out, schema.CACHE_FILES, owned=lambda folder: old is not None) as run:
        return _fill_cache(run, inputs, cfg, patient_table, id_lists, workers, seed, val_fraction, test_fraction,
                           progress, hu_offset)


def _fill_cache(run: RunFolder, inputs, cfg: DataConfig, patient_table, id_lists, workers, seed, val_fraction,
                test_fraction, progress, hu_offset) -> dict:
    """The cases not yet finished, then splits and manifest; ``run`` is the cache folder."""
    out = run.folder
    if schema.cases_dir(out).exists():
        remove_partials(schema.cases_dir(out))  # leftovers of a killed run
    schema.write_config(out, cfg)
    run.record(out / schema.CONFIG_FILE)
    cases, problems = discover_cases(list(inputs), patient_table)
    todo, done = [], []
    for c in cases:
        finished = _read_case(schema.case_dir(out, c.case_id))
        if finished is not None:
            done.append(finished)
        else:
            todo.append(c)
    failed = [dict(p, status="failed") for p in problems]
    # A lone input that cannot be used is reported once, as the command's error, not also as a warning.
    quiet = not done and len(todo) + len(problems) == 1
    for problem in failed:
        _log_result(problem, run, quiet)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    bar = None
    if progress and todo:  # no bar before a refusal of every input: the error is the one line
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="prepare", unit="case")
    results = []
    if workers <= 1:
        _init_worker(threads)
        for c in todo:
            results.append(_prepare_one(c.__dict__, str(schema.case_dir(out, c.case_id)), cfg.to_dict(), hu_offset))
            _log_result(results[-1], run, quiet)
            if bar:
                bar.update(1)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futs = [pool.submit(_prepare_one, c.__dict__, str(schema.case_dir(out, c.case_id)), cfg.to_dict(),
                                hu_offset) for c in todo]
            for fut in as_completed(futs):
                results.append(fut.result())
                _log_result(results[-1], run, quiet)
                if bar:
                    bar.update(1)
    if bar:
        bar.close()
    done += [r for r in results if r["status"] == "done"]
    failed += [r for r in results if r["status"] == "failed"]
    done.sort(key=lambda r: r["case_id"])
    if not done and failed:
        _nothing_usable(failed)
    patients = [r["patient_id"] for r in done]
    splits = make_splits(patients, seed, val_fraction, test_fraction,
                         id_lists["train"], id_lists["test"], id_lists["val"])
    by_patient = {}
    for r in done:
        by_patient.setdefault(r["patient_id"], []).append(r["case_id"])
    case_splits = {k: sorted(c for p in v for c in by_patient.get(p, [])) for k, v in splits.items()}
    schema.write_splits(out, splits, case_splits, seed)
    run.record(out / schema.SPLITS_FILE)
    manifest = schema.make_manifest(
        cfg,
        cases=[{k: r[k] for k in ("case_id", "patient_id", "source")} for r in done],
        failed=[{k: r.get(k) for k in ("case_id", "source", "error")} for r in failed],
        skipped_as_finished=len(cases) - len(todo),
    )
    schema.write_manifest(out, manifest)
    run.record(out / schema.MANIFEST_FILE, out / schema.ERRORS_FILE)
    return manifest


def _read_case(folder: Path) -> dict | None:
    """A finished case's record; an unreadable one means the case is done again."""
    info = schema.read_case_info(folder)
    if info is None and (folder / schema.CASE_INFO_FILE).exists():
        log.warning("%s is unreadable; preparing that case again", folder / schema.CASE_INFO_FILE)
    return info


def _nothing_usable(failed: list[dict]) -> None:
    """No input gave a case: an error, and no new cache folder left behind (`RunFolder`). Bad input
    is exit 2; an internal error on every case is exit 1 with the first one's message."""
    internal = [f for f in failed if f.get("traceback") is not None]
    if internal:
        raise AxonRunError(f"no case could be prepared: {len(internal)} of {len(failed)} inputs failed with an "
                           f"internal error (run with -v for the traceback); the first, {internal[0]['source']}: "
                           f"{internal[0]['error']}")
    first = failed[0]["error"]
    if len(failed) == 1:
        raise AxonInputError(None, first)
    raise AxonInputError(None, f"none of the {len(failed)} inputs is a usable CT (each is named above); "
                               f"the first: {first}")


def _log_result(r: dict, run: RunFolder, quiet: bool = False) -> None:
    """A finished case keeps the cache folder (a rerun continues from it); a failed one is logged."""
    if r["status"] != "failed":
        run.keep()
        return
    if not quiet or r.get("traceback") is not None:  # quiet: a lone bad input, raised as the error instead
        log.warning("skipped %s: %s", r["source"], r["error"])
    schema.append_error(run.folder, {k: r.get(k) for k in ("case_id", "source", "error", "traceback")})
    run.record(run.folder / schema.ERRORS_FILE)
