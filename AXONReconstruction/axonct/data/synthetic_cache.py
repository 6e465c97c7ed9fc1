"""`axon synth`'s output: synthetic chests written as an ordinary training cache.

Kept apart from the generator (`synthetic_anatomy`) so that the chest model and the bookkeeping of
a set (its seeds, resuming, disjointness from other sets) change independently. The format is
`cache_schema`'s, so training and evaluation read synthetic and real caches alike; the manifest's
"synthetic" record and each case's seed are what let held-out sets be checked for overlap exactly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from axonct.config import DataConfig
from axonct.data import cache_schema as schema
from axonct.data.synthetic_anatomy import (
    GENERATOR_VERSION,
    SEED_SCHEME,
    AnatomyConfig,
    SyntheticChestGenerator,
    case_seed,
)
from axonct.errors import AxonInputError
from axonct.atomic import remove_partials
from axonct.io.output_policy import RunFolder


def _synthetic_info(root: Path) -> dict | None:
    """The "synthetic" record of a cache; None for a real-CT cache or anything that is not a cache
    (or that cannot be read: a sibling folder without permission is not ours to judge)."""
    try:
        if not (root / schema.MANIFEST_FILE).exists():
            return None
        return schema.read_manifest(root).get("synthetic")
    except (AxonInputError, OSError):
        return None


def _seeds_of(root: Path) -> dict[int, str]:
    """case seed -> case id of a cache (empty for a cache of real CTs)."""
    manifest = schema.read_manifest(root)
    return {int(c["case_seed"]): c["case_id"] for c in manifest["cases"] if "case_seed" in c}


def assert_disjoint(cache_a: str | Path, cache_b: str | Path) -> None:
    """Raise AxonInputError if two caches share any synthetic case seed (i.e. the same chest)."""
    a, b = _seeds_of(Path(cache_a)), _seeds_of(Path(cache_b))
    shared = sorted(set(a) & set(b))
    if shared:
        ex = ", ".join(f"{a[s]}={b[s]}" for s in shared[:3])
        raise AxonInputError(cache_b, f"shares {len(shared)} synthetic case seed(s) with {cache_a} (e.g. {ex}); "
                                      "held-out sets must use another --seed")


def _check_seed_unused(out: Path, seed: int, seeds: set[int], disjoint_from: Sequence[str | Path] | None) -> None:
    """Refuse a set seed used by a sibling synthetic cache, and any overlap with ``disjoint_from``."""
    if out.parent.exists():
        for sib in sorted(out.parent.iterdir()):
            if sib.resolve() == out.resolve() or not sib.is_dir():
                continue
            info = _synthetic_info(sib)
            if info is not None and int(info.get("set_seed", -1)) == seed:
                raise AxonInputError(sib, f"already uses synthetic set seed {seed}; choose another --seed so "
                                          "the sets stay disjoint")
    for other in disjoint_from or ():
        shared = seeds & set(_seeds_of(Path(other)))
        if shared:
            raise AxonInputError(other, f"already holds {len(shared)} of the case seeds of set seed {seed}; "
                                        "choose another --seed")


def _check_resumable(out: Path, data_cfg: DataConfig, seed: int, split: str, anatomy: AnatomyConfig) -> dict | None:
    """The manifest of the set being continued in ``out`` (None for a new set), if it is this set."""
    if not (out / schema.MANIFEST_FILE).exists():
        return None
    old = schema.read_manifest(out, corrupt_hint="this set cannot be resumed; use another --out folder")
    if not schema.same_config(old, data_cfg):
        raise AxonInputError(out, "this cache was written with a different grid/geometry config; "
                                  "use another --out folder or the same preset")
    info = old.get("synthetic")
    if info is None:
        raise AxonInputError(out, "holds a cache of real CTs; write synthetic cases to another --out folder")
    if int(info["set_seed"]) != seed or info.get("anatomy") != anatomy.to_dict() or info.get("split") != split:
        raise AxonInputError(out, f"was written with set seed {info['set_seed']}, split {info.get('split')} "
                                  "and other anatomy settings; use another --out folder")
    return old


def _is_finished(out: Path, case_id: str, seed: int) -> bool:
    info = schema.read_case_info(schema.case_dir(out, case_id))
    try:
        return info is not None and int(info.get("case_seed", -1)) == seed
    except (TypeError, ValueError):
        return False


def case_id_of(set_seed: int, index: int) -> str:
    return f"SYN{set_seed}-{index:05d}"


def write_synthetic_cache(out: str | Path, data_cfg: DataConfig, count: int, seed: int, split: str = "train",
                          anatomy: AnatomyConfig | None = None, generator: SyntheticChestGenerator | None = None,
                          ct_path: str | Path | None = None, labels_path: str | Path | None = None,
                          structures_path: str | Path | None = None,
                          disjoint_from: Sequence[str | Path] | None = None, progress: bool = False) -> dict:
    """Write ``count`` synthetic chests as an `axon prepare`-format cache (all in ``split``).

    Case i uses ``case_seed(seed, i)``. Atomic per case and resumable: finished cases are kept,
    leftovers of a killed run removed; rerunning with a larger ``count`` adds cases.
    """
    out = Path(out)
    seed, count = int(seed), int(count)
    if seed < 0:
        raise AxonInputError(None, f"--seed must be a non-negative integer, not {seed}")
    if count < 1:
        raise AxonInputError(None, f"--count must be at least 1, not {count}")
    if split not in schema.SPLIT_NAMES:
        raise AxonInputError(None, f"unknown split {split!r}; use train, val or test")
    if generator is not None:
        anatomy = generator.anatomy
        if schema.config_dict(generator.config) != schema.config_dict(data_cfg):
            raise ValueError("the generator was built for another DataConfig")
    anatomy = anatomy or AnatomyConfig()
    seeds = {i: case_seed(seed, i) for i in range(count)}
    _check_seed_unused(out, seed, set(seeds.values()), disjoint_from)
    old = _check_resumable(out, data_cfg, seed, split, anatomy)
    with RunFolder("synth", out, schema.CACHE_FILES, owned=lambda folder: old is not None) as run:
        return _fill(run, old, data_cfg, anatomy, generator, seeds, seed, split, count, progress,
                     (ct_path, labels_path, structures_path))


def _fill(run: RunFolder, old, data_cfg, anatomy, generator, seeds, seed, split, count, progress, sources) -> dict:
    """The chests not yet finished, then splits and manifest; ``run`` is the cache folder."""
    out = run.folder
    schema.cases_dir(out).mkdir(parents=True, exist_ok=True)
    remove_partials(schema.cases_dir(out))
    schema.write_config(out, data_cfg)
    run.record(out / schema.CONFIG_FILE)

    todo = [i for i in range(count) if not _is_finished(out, case_id_of(seed, i), seeds[i])]
    if todo and generator is None:
        generator = SyntheticChestGenerator(data_cfg, anatomy, *sources)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="synth", unit="case")
    for i in todo:
        t0 = time.time()
        cid = case_id_of(seed, i)
        chest = generator.generate(seeds[i])
        drr = chest.render_drr()
        info = {"case_id": cid, "patient_id": cid, "source": f"synthetic:{generator.ct_path}",
                "set_seed": seed, "index": i, "case_seed": seeds[i], "split": split,
                "cube_center_lps_mm": list(chest.center_lps), "views": list(data_cfg.views), "modality": "CT",
                "generator_version": GENERATOR_VERSION, "params": chest.params,
                "seconds": round(time.time() - t0, 2)}
        schema.write_case(schema.case_dir(out, cid), chest.unit, drr, info)
        run.keep()
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    ids = [case_id_of(seed, i) for i in range(count)]
    ids += [c for c in schema.finished_case_ids(out) if c not in ids]  # cases of an earlier, larger run stay listed
    cases = []
    for c in ids:
        info = schema.read_case_info(schema.case_dir(out, c))
        if info is None or "case_seed" not in info:
            continue  # an unreadable leftover beyond ``count``: not part of the set
        cases.append({"case_id": c, "patient_id": c, "source": info["source"], "case_seed": info["case_seed"]})
    splits = {k: [] for k in schema.SPLIT_NAMES}
    splits[split] = [c["case_id"] for c in cases]
    schema.write_splits(out, dict(splits), splits, seed)
    run.record(out / schema.SPLITS_FILE)
    synthetic = {"set_seed": seed, "split": split, "seed_scheme": SEED_SCHEME,
                 "generator_version": GENERATOR_VERSION, "anatomy": anatomy.to_dict(),
                 "source_ct": str(generator.ct_path) if generator else None,
                 "source_labels": _labels_record(generator) if generator else None}
    if old is not None and generator is None:  # nothing regenerated: keep the recorded sources
        synthetic["source_ct"] = old["synthetic"].get("source_ct")
        synthetic["source_labels"] = old["synthetic"].get("source_labels")
    manifest = schema.make_manifest(data_cfg, cases=cases, failed=[], skipped_as_finished=count - len(todo),
                                    synthetic=synthetic)
    schema.write_manifest(out, manifest)
    run.record(out / schema.MANIFEST_FILE)
    return manifest


def _labels_record(generator) -> str:
    """Where the source's labels came from: a label map's path, or the HU labelling."""
    return str(generator.labels_path) if generator.labels_path else "auto: labelled from HU (data.auto_labels)"
