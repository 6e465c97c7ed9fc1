"""The training cache's on-disk format, in one place.

`axon prepare` (real CTs) and `axon synth` (synthetic chests) write it and `datasets.CTCache` reads
it. Keeping the names, dtypes, version and checks here stops the two writers drifting apart, and
turns a damaged cache, or one from a newer AXON, into a clear refusal instead of a crash deep in a
training run.

A cache folder::

    manifest.json   format_version, config (a DataConfig), cases [{case_id, patient_id, source, ...}],
                    failed, skipped_as_finished; a synthetic cache also has "synthetic"
    splits.json     {"by_patient": {split: [patient id]}, "cases": {split: [case id]}, "seed": int}
    config.json     the DataConfig again, for people
    errors.jsonl    one failed input a line (`axon prepare`)
    cases/<id>/     ct.npy    float16 [S, S, S], the model cube in [0, 1]
                    drr.npy   float32 [V, P, P], clean line integrals in DataConfig.views order
                    case.json what made the case (source, centre, seed, ...)

Each case folder is written whole or not at all (`atomic.atomic_dir`), so a folder with case.json
is a finished case.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from axonct.config import DataConfig
from axonct.errors import AxonInputError, disk_full_error
from axonct.atomic import atomic_dir, write_text

CACHE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SPLITS_FILE = "splits.json"
CONFIG_FILE = "config.json"
ERRORS_FILE = "errors.jsonl"
CACHE_FILES = [CONFIG_FILE, SPLITS_FILE, MANIFEST_FILE, ERRORS_FILE]  # a cache's own files, beside cases/
CASES_DIR = "cases"
CT_FILE = "ct.npy"
DRR_FILE = "drr.npy"
CASE_INFO_FILE = "case.json"
CT_DTYPE = np.float16
DRR_DTYPE = np.float32
SPLIT_NAMES = ("train", "val", "test")

_CASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # a folder name: no separators, not . or ..


def config_dict(cfg: DataConfig) -> dict:
    """The config as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(cfg.to_dict()))


def same_config(manifest: dict, cfg: DataConfig) -> bool:
    return manifest.get("config") == config_dict(cfg)


# ----------------------------------------------------------------------------- cases


def cases_dir(root: str | Path) -> Path:
    return Path(root) / CASES_DIR


def case_dir(root: str | Path, case_id: str) -> Path:
    return cases_dir(root) / case_id


def write_case(folder: str | Path, ct_unit: np.ndarray, drr: np.ndarray, info: dict) -> None:
    """One case, all or nothing: the cube as float16, the clean views as float32, and ``info``."""
    ct_unit, drr = np.asarray(ct_unit), np.asarray(drr)
    if ct_unit.ndim != 3 or drr.ndim != 3:
        raise ValueError(f"a case needs a 3D cube and a [views, P, P] stack, not {ct_unit.shape} and {drr.shape}")
    try:
        with atomic_dir(folder) as tmp:
            np.save(tmp / CT_FILE, ct_unit.astype(CT_DTYPE))
            np.save(tmp / DRR_FILE, drr.astype(DRR_DTYPE))
            (tmp / CASE_INFO_FILE).write_text(json.dumps(info, indent=2))
    except OSError as exc:
        full = disk_full_error(exc, Path(folder))
        if full is not None and full is not exc:
            raise full from None
        raise


def read_case_info(folder: str | Path) -> dict | None:
    """A finished case's case.json; None when the case is missing or its record unusable (redo it)."""
    path = Path(folder) / CASE_INFO_FILE
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and "patient_id" in info else None


def finished_case_ids(root: str | Path) -> list[str]:
    """Case folders that hold a case.json (finished), sorted."""
    folder = cases_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / CASE_INFO_FILE).exists())


def read_case_arrays(folder: str | Path, config: DataConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cube, views) of one case as float32, checked against ``config``'s grid and detector."""
    folder = Path(folder)
    rebuild = "rerun `axon prepare` (or `axon synth`) to rebuild the case"
    try:
        ct = np.load(folder / CT_FILE)
        drr = np.load(folder / DRR_FILE)
    except (OSError, ValueError, EOFError) as exc:
        raise AxonInputError(folder, f"case files cannot be read ({exc}); {rebuild}") from exc
    problems = []
    if not (np.issubdtype(ct.dtype, np.floating) and np.issubdtype(drr.dtype, np.floating)):
        problems.append(f"dtypes {ct.dtype} and {drr.dtype} are not floating point")
    elif config is not None:
        s, p = config.grid.size, config.geometry.detector_pixels
        if ct.shape != (s, s, s):
            problems.append(f"{CT_FILE} is {ct.shape}, the cache's grid is {s}^3")
        if drr.shape != (len(config.views), p, p):
            problems.append(f"{DRR_FILE} is {drr.shape}, the cache has {len(config.views)} views of {p}^2")
    elif ct.ndim != 3 or drr.ndim != 3:
        problems.append(f"shapes {ct.shape} and {drr.shape} are not a cube and a stack of views")
    if not problems and not (np.isfinite(ct).all() and np.isfinite(drr).all()):
        problems.append("they hold NaN or infinite values")
    if problems:
        raise AxonInputError(folder, "case files are damaged (" + "; ".join(problems) + f"); {rebuild}")
    return ct.astype(np.float32), drr.astype(np.float32)


# ----------------------------------------------------------------------------- manifest, splits, config


def make_manifest(cfg: DataConfig, cases: list[dict], failed: list[dict], skipped_as_finished: int,
                  **extra) -> dict:
    return {"format_version": CACHE_FORMAT_VERSION, "config": cfg.to_dict(), "cases": cases, "failed": failed,
            "skipped_as_finished": skipped_as_finished, **extra}


def write_manifest(root: str | Path, manifest: dict) -> None:
    write_text(Path(root) / MANIFEST_FILE, json.dumps(manifest, indent=2))


def read_manifest(root: str | Path, corrupt_hint: str = "rebuild the cache with `axon prepare` or `axon synth`"
                  ) -> dict:
    """manifest.json of a cache, checked; ``corrupt_hint`` ends the message when it is unusable."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not path.exists():
        raise AxonInputError(root, "is not an AXON cache (no manifest.json); build one with `axon prepare`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AxonInputError(path, f"is corrupt ({exc}), so {corrupt_hint}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise AxonInputError(path, f"is corrupt ({problem}), so {corrupt_hint}")
    version = manifest.get("format_version", CACHE_FORMAT_VERSION)
    if version > CACHE_FORMAT_VERSION:
        raise AxonInputError(path, f"is cache format {version}; this AXON reads format {CACHE_FORMAT_VERSION} "
                                   "and older (update AXON or rebuild the cache)")
    return manifest


def _manifest_problem(m) -> str | None:
    if not isinstance(m, dict):
        return "not a JSON object"
    version = m.get("format_version", CACHE_FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return f"format_version {version!r} is not a positive whole number"
    if not isinstance(m.get("config"), dict):
        return "no config"
    cases = m.get("cases")
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        return "cases is not a list of records"
    for c in cases:
        if not isinstance(c.get("case_id"), str) or not _CASE_ID.fullmatch(c["case_id"]):
            return f"case id {c.get('case_id')!r} is not a plain folder name"
    return None


def manifest_config(manifest: dict, root: str | Path | None = None) -> DataConfig:
    try:
        return DataConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        where = Path(root) / MANIFEST_FILE if root is not None else None
        raise AxonInputError(where, f"holds a config this AXON cannot read ({type(exc).__name__}: {exc})") from None


def write_splits(root: str | Path, by_patient: dict[str, list[str]], cases: dict[str, list[str]], seed: int) -> None:
    write_text(Path(root) / SPLITS_FILE, json.dumps({"by_patient": by_patient, "cases": cases, "seed": seed},
                                                    indent=2))


def read_splits(root: str | Path, known_ids: list[str] | None = None) -> dict[str, list[str]]:
    """split name -> case ids from splits.json ({} without one), checked against ``known_ids``."""
    path = Path(root) / SPLITS_FILE
    if not path.exists():
        return {}
    try:
        splits = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AxonInputError(path, f"is corrupt ({exc}); rebuild the cache") from None
    cases = splits.get("cases") if isinstance(splits, dict) else None
    if not isinstance(cases, dict) or not all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                                              for v in cases.values()):
        raise AxonInputError(path, "is corrupt (no \"cases\" lists of case ids); rebuild the cache")
    if known_ids is not None:
        unknown = sorted({c for v in cases.values() for c in v} - set(known_ids))
        if unknown:
            raise AxonInputError(path, f"names {len(unknown)} case(s) that manifest.json does not list "
                                       f"(e.g. {unknown[0]}); rebuild the cache")
    return cases


def write_config(root: str | Path, cfg: DataConfig) -> None:
    write_text(Path(root) / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2))


def append_error(root: str | Path, record: dict) -> None:
    with open(Path(root) / ERRORS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
