"""Training batches from an `axon prepare` cache.

Every batch is a pure function of (seed, step, rank): cases, spatial augmentation and X-ray realism
are all drawn from a generator seeded by those three numbers. That is what makes `--resume`
continue exactly the same loss curve, and lets DDP ranks see different data without coordination.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from axonct.config import DataConfig
from axonct.data import cache_schema as schema
from axonct.physics.drr import drr_from_unit_volume
from axonct.physics.geometry import rotation_matrix
from axonct.errors import AxonInputError
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
from axonct.transforms.normalize import robust_unit


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A generator for one (seed, step, rank, stream): reproducible without saving RNG state."""
    key = (((seed * 1_000_003 + step) * 1009 + rank) * 31 + stream) % (2**63 - 1)
    return torch.Generator().manual_seed(key)


class CTCache:
    """Read access to a prepared cache (`cache_schema`), with its config, splits and cases checked."""

    def __init__(self, root: str | Path, expected: DataConfig | None = None, max_cached: int = 64):
        self.root = Path(root)
        self.manifest = schema.read_manifest(self.root)
        self.config = schema.manifest_config(self.manifest, self.root)
        if expected is not None and not schema.same_config(self.manifest, expected):
            raise AxonInputError(self.root, f"cache grid/geometry ({self.config.grid.size}^3, "
                                            f"{self.config.geometry.detector_pixels}^2 views) differ from the "
                                            f"preset's ({expected.grid.size}^3, {expected.geometry.detector_pixels}^2); "
                                            "prepare the cache with the same --preset")
        self.all_ids = [c["case_id"] for c in self.manifest["cases"]]
        self.splits = schema.read_splits(self.root, self.all_ids)
        self._memo: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._max = max_cached

    def case_ids(self, split: str) -> list[str]:
        if split == "all":
            return list(self.all_ids)
        return list(self.splits.get(split, []))

    def weights(self, case_ids: list[str]) -> list[float]:
        """Sampling weights that give every patient in ``case_ids`` the same share: the 11 breathing
        phases of one 4D CT are one patient, and drawing them per volume would make that patient's
        chest the model's prior (cases without a recorded patient count as their own)."""
        patient = {c["case_id"]: c.get("patient_id") or c["case_id"] for c in self.manifest["cases"]}
        owners = [patient.get(i, i) for i in case_ids]
        counts: dict[str, int] = {}
        for o in owners:
            counts[o] = counts.get(o, 0) + 1
        return [1.0 / (len(counts) * counts[o]) for o in owners]

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id in self._memo:
            self._memo.move_to_end(case_id)
            return self._memo[case_id]
        ct, drr = schema.read_case_arrays(schema.case_dir(self.root, case_id), self.config)
        self._memo[case_id] = (ct, drr)
        if len(self._memo) > self._max:
            self._memo.popitem(last=False)
        return ct, drr


class CacheSet:
    """Several caches trained on together (real CTs, synthetic chests of each source CT). A batch
    draws each cache equally often, whatever its size, so 400 synthetic chests of one patient do not
    drown the real CTs. Case keys are ``<cache folder name>/<case id>`` (names made unique)."""

    def __init__(self, roots, expected: DataConfig | None = None):
        self.caches = [CTCache(r, expected) for r in roots]
        names = []
        for c in self.caches:  # folder names, made unique: runs/a/cache and runs/b/cache -> cache, cache-2
            name, k = c.root.name, 1
            while name in names:
                k += 1
                name = f"{c.root.name}-{k}"
            names.append(name)
        self.names = names
        first = self.caches[0]
        for c in self.caches[1:]:
            if not schema.same_config(c.manifest, first.config):
                raise AxonInputError(c.root, f"has another grid/geometry than {first.root}; prepare every cache "
                                             "with the same --preset")
        self.root, self.config = first.root, first.config
        self._by_name = dict(zip(names, self.caches))

    def case_ids(self, split: str) -> list[str]:
        return [f"{n}/{i}" for n, c in zip(self.names, self.caches) for i in c.case_ids(split)]

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        name, case_id = key.split("/", 1)
        return self._by_name[name].load(case_id)

    def weights(self, keys: list[str]) -> list[float]:
        """Sampling weights that give every cache present in ``keys`` the same share, and inside a
        cache every patient the same share (`CTCache.weights`)."""
        by_cache: dict[str, list[str]] = {}
        for k in keys:
            name, case_id = k.split("/", 1)
            by_cache.setdefault(name, []).append(case_id)
        inner = {name: dict(zip(ids, self._by_name[name].weights(ids))) for name, ids in by_cache.items()}
        return [inner[k.split("/", 1)[0]][k.split("/", 1)[1]] / len(by_cache) for k in keys]

    def sources(self) -> list[dict]:
        """Per cache: its folder and, for a synthetic cache, the CT its chests were made from."""
        out = []
        for c in self.caches:
            synthetic = c.manifest.get("synthetic")
            out.append({"cache": str(c.root.resolve()),
                        "synthetic_from": synthetic.get("source_ct") if isinstance(synthetic, dict) else None})
        return out


def open_caches(data, expected: DataConfig | None = None):
    """One folder: a `CTCache`; several: a `CacheSet`."""
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    if not roots:
        raise AxonInputError(None, "--data needs at least one cache folder")
    return CTCache(roots[0], expected) if len(roots) == 1 else CacheSet(roots, expected)


@dataclass
class Augmentation:
    """Spatial augmentation of the CT (DRRs are re-rendered after it) and realism of the views."""

    spatial: bool = True
    max_rotation_deg: float = 6.0
    scale_range: tuple[float, float] = (0.92, 1.08)
    max_shift_mm: float = 12.0
    realism: RealismConfig | None = field(default_factory=RealismConfig)
    clean_probability: float = 0.0  # with realism: share of samples left as clean DRRs (what `axon drr`
    # writes and a raw detector image is close to), so those inputs are not outside the training domain

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(spatial=False, realism=None)


def random_affine(cube: torch.Tensor, aug: Augmentation, fov_mm: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate, scale and shift a [D,H,W] unit cube about its centre (outside = air = 0)."""
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=gen))  # noqa: E731
    angles = torch.tensor([u(-1, 1) for _ in range(3)]) * math.radians(aug.max_rotation_deg)
    scale = u(*aug.scale_range)
    shift = torch.tensor([u(-1, 1) for _ in range(3)]) * aug.max_shift_mm / (fov_mm / 2)
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = rotation_matrix(angles.double()).float() / scale
    theta[0, :, 3] = shift
    grid = F.affine_grid(theta, (1, 1, *cube.shape), align_corners=False)
    return F.grid_sample(cube[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


class BatchMaker:
    """Builds model-ready batches from a cache split."""

    def __init__(self, cache: CTCache, case_ids: list[str], sr_factor: int, aug: Augmentation):
        if not case_ids:
            raise AxonInputError(cache.root, "has no cases in the requested split")
        self.cache, self.ids, self.factor, self.aug = cache, case_ids, sr_factor, aug
        self.cfg = cache.config
        weights = cache.weights(case_ids)
        uniform = max(weights) == min(weights) and not isinstance(cache, CacheSet)
        self._weights = None if uniform else torch.tensor(weights)  # uniform: the draws of earlier runs

    def sample(self, case_id: str, gen: torch.Generator) -> dict:
        ct, drr = self.cache.load(case_id)
        cube = torch.from_numpy(ct)
        views = torch.from_numpy(drr)
        if self.aug.spatial:
            cube = random_affine(cube, self.aug, self.cfg.grid.fov_mm, gen).clamp(0, 1)
            with torch.no_grad():
                views = drr_from_unit_volume(cube, self.cfg.grid, self.cfg.geometry, self.cfg.views)
        clean = self.aug.realism is None
        if not clean and self.aug.clean_probability > 0:  # no extra draw otherwise: earlier runs' streams
            clean = float(torch.rand((), generator=gen)) < self.aug.clean_probability
        if clean:
            views = robust_unit(views[:, None])[:, 0]
        else:
            seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
            views = simulate_radiograph(views, self.aug.realism, seed=seed)
        hi = cube[None] * 2 - 1
        lo = F.avg_pool3d(hi[None], self.factor)[0] if self.factor > 1 else hi
        return {"x0_hi": hi, "x0": lo, "views": views.float(), "view_mask": torch.ones(views.shape[0])}

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0) -> dict:
        gen = step_generator(seed, step, rank, stream=1)
        if self._weights is None:
            picks = torch.randint(0, len(self.ids), (batch_size,), generator=gen).tolist()
        else:
            picks = torch.multinomial(self._weights, batch_size, replacement=True, generator=gen).tolist()
        items = [self.sample(self.ids[i], gen) for i in picks]
        out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        out["case_ids"] = [self.ids[i] for i in picks]
        return out

    def fixed(self, case_ids: list[str]) -> dict:
        """Unaugmented batch of given cases (validation)."""
        gen = torch.Generator().manual_seed(0)
        items = [self.sample(c, gen) for c in case_ids]
        out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        out["case_ids"] = list(case_ids)
        return out
