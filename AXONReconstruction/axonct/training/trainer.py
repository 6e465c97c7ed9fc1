"""`axon train {coarse,prior,controlnet,sr}`: one trainer for every stage.

What it guarantees: seeded runs whose batches and noise are a pure function of (seed, step, rank)
(so `--resume` continues the very same loss curve), AMP (bf16 autocast on CUDA and CPU by default), EMA weights
for inference, gradient clipping, a checkpoint every N steps (resume state + the stage's
safetensors card), validation PSNR/SSIM with PNG montages, a CSV log, a progress bar, and several
processes or machines through torch.distributed (`torchrun`; gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from axonct import runtime
from axonct.atomic import atomic_path, write_text
from axonct.pipeline.checkpoint import read_resume, save_stage
from axonct.data.datasets import Augmentation, BatchMaker, CacheSet, open_caches, step_generator
from axonct.errors import AxonInputError
from axonct.metrics import psnr, ssim
from axonct.io.montage import orthogonal_slices, save_montage
from axonct.io.output_policy import RunFolder
from axonct.presets import ModelPreset

from axonct.pipeline.loading import STAGES, build_stage, load_trained_stage


def trainable_parameters(stage: str, model: nn.Module) -> list[nn.Parameter]:
    if stage == "controlnet":
        return list(model.trainable_parameters())
    return [p for p in model.parameters() if p.requires_grad]


class StageLoss(nn.Module):
    """forward() computes the stage's loss, so DistributedDataParallel's gradient hooks fire."""

    def __init__(self, stage: str, model: nn.Module, preset: ModelPreset, coarse: nn.Module | None = None):
        super().__init__()
        self.stage, self.model, self.preset = stage, model, preset
        self.coarse = coarse  # frozen Stage I that makes ControlNet's conditioning

    def forward(self, batch: dict, gen: torch.Generator):
        if self.stage in ("coarse", "baseline"):
            return self.model.training_loss(batch["x0"], batch["views"], batch["view_mask"], gen)
        if self.stage == "prior":
            return self.model.training_loss(batch["x0"], gen)
        if self.stage == "controlnet":
            return self.model.training_loss(batch["x0"], batch["cond"], gen)
        from axonct.models.sr import sr_training_pair

        hr, lr = sr_training_pair(batch["x0_hi"], self.preset.sr.train_patch, gen, self.preset.sr.factor)
        return self.model.training_loss(hr, lr)


def coarse_condition(coarse: nn.Module, batch: dict, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Stage I's sampled volume, the conditioning ControlNet learns to read."""
    with torch.no_grad():
        return coarse.sample(batch["views"], batch["view_mask"], num_steps=steps, generator=gen)


# ----------------------------------------------------------------------------- EMA
class EMA:
    def __init__(self, params: list[nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params: list[nn.Parameter], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up so early EMA is not stuck at init
        for s, p in zip(self.shadow, params):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    @contextlib.contextmanager
    def applied(self, params: list[nn.Parameter]):
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, s in zip(params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """`runtime.resolve_device`, plus this process's own GPU under torchrun."""
    dev = runtime.resolve_device(name)
    if dev.type == "cuda" and dev.index is None and info is not None and info.world > 1:
        dev = torch.device(f"cuda:{info.local_rank}")
    return dev


def params_checksum(params: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the loop
def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def run_files(stage: str) -> list[str]:
    """The files a training run of ``stage`` writes in its folder (beside val_montages/)."""
    return ["config.json", "train_log.csv", "val_log.csv", "train_summary.json", "resume.pt",
            f"{stage}.safetensors", f"{stage}.json"]


def train(
    stage: str,
    data: str | Path,
    preset: ModelPreset,
    out: str | Path,
    resume: bool = False,
    device: str = "auto",
    prior_dir: str | None = None,
    coarse_dir: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    init_from: str | Path | None = None,
) -> dict:
    """Train one stage. ``init_from``: a weights or run folder whose weights of this stage start a
    fresh run (fine-tuning, e.g. after a change of input domain); the architecture must match.

    The run folder is under the output policy (`RunFolder`): a user's file at one of the run's names
    is refused before anything is computed, and a new folder is removed again if the run ends before
    its first checkpoint."""
    if stage not in STAGES:
        raise AxonInputError(None, f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    args = (stage, data, preset, Path(out), resume, device, prior_dir, coarse_dir, progress, log, init_from)
    if int(os.environ.get("RANK", "0")) != 0:  # other ranks of a distributed run write nothing
        return _train(*args, run=None)
    if resume and not (Path(out) / "resume.pt").is_file():
        log(f"--resume: {out} holds no checkpoint (resume.pt) yet; starting a new run at step 0")
    with RunFolder("train", out, run_files(stage), owned=lambda f: (f / "resume.pt").is_file()) as run:
        return _train(*args, run=run)


def _train(stage, data, preset, out, resume, device, prior_dir, coarse_dir, progress, log, init_from, run) -> dict:
    info = init_distributed(torch.device("cuda" if device.startswith("cuda") else "cpu"))
    dev = resolve_device(device, info)
    tc = preset.train
    for name, value in (("steps", tc.steps), ("batch_size", tc.batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AxonInputError(None, f"train.{name} must be a whole number of at least 1, not {value!r}")
    precision = runtime.resolve_precision(tc.precision, dev)
    log(f"train {stage} on {dev}, precision {precision}")
    cache = open_caches(data, expected=preset.data)
    train_ids = cache.case_ids("train") or cache.case_ids("all")
    val_ids, val_label = cache.case_ids("val"), "held-out (val split)"
    if not val_ids:
        val_ids, val_label = train_ids, "seen in training (the cache has no val split)"
    aug = Augmentation(spatial=tc.augment_spatial)
    if not tc.augment_realism:
        aug.realism = None
    maker = BatchMaker(cache, train_ids, preset.sr.factor, aug)
    val_maker = BatchMaker(cache, val_ids[: tc.val_cases], preset.sr.factor, Augmentation.none())

    if stage == "coarse":  # a resumed run keeps the tables it started with (another CPU may round differently)
        saved = _saved_input_tables(out) if resume else None
        if saved is None:
            preset = with_input_tables(preset, maker, log)
        else:
            try:  # CoarseConfig checks the tables
                preset = dataclasses.replace(preset, coarse=dataclasses.replace(preset.coarse, input_tables=saved))
            except (TypeError, ValueError) as exc:
                raise AxonInputError(out / "config.json", f"holds unusable Stage I input tables ({exc}); the run "
                                                          "cannot be resumed") from None

    if stage == "controlnet" and (prior_dir is None or coarse_dir is None):
        raise AxonInputError(None, "controlnet training needs the trained prior and coarse stages: "
                                   "--prior RUN_DIR --coarse RUN_DIR")
    torch.manual_seed(tc.seed)
    model = build_stage(stage, preset, prior_dir).to(dev)
    coarse = load_trained_stage("coarse", coarse_dir, preset, dev) if stage == "controlnet" else None
    params = trainable_parameters(stage, model)
    loss_module = StageLoss(stage, model, preset, coarse)
    if info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(loss_module, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    ema = EMA(params, tc.ema_decay)

    state_path = out / "resume.pt"
    start = 0
    if state_path.exists() and not resume:
        raise AxonInputError(out, "already holds a training run; pass --resume to continue it or choose another --out")
    if resume and state_path.exists():
        state = read_resume(state_path, dev)  # a truncated or damaged file: a message, not a traceback
        if state["stage"] != stage or _resumable(state["preset"]) != _resumable(preset.to_dict()):
            raise AxonInputError(state_path, "was written by a different stage or config; it cannot be resumed with these")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.shadow = [s.to(dev) for s in state["ema"]]
        start = state["step"]
        log(f"resuming {stage} at step {start}")
    elif init_from is not None:
        from axonct.pipeline.checkpoint import load_into

        state, init_card, init_file = _initial_state(init_from, stage)
        if stage == "controlnet":  # the frozen prior is --prior's, not the one saved beside the old ControlNet
            state = {**state, **{k: v for k, v in model.state_dict().items() if k.startswith("prior.")}}
        load_into(model, state, init_file)
        ema = EMA(params, tc.ema_decay)  # the EMA starts at the loaded weights
        log(f"{stage} starts from the weights in {init_from}")
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.json", json.dumps(preset.to_dict(), indent=2))
        run.record(out / "config.json")

    trained_on = {"cases": train_ids, "steps": tc.steps, "world_size": info.world, "seed": tc.seed}
    if isinstance(cache, CacheSet):
        sources = cache.sources()
        trained_on["caches"] = [c["cache"] for c in sources]
        trained_on["sampling"] = "each cache equally often"
        synthetic_from = [c["synthetic_from"] for c in sources if c["synthetic_from"]]
    else:
        trained_on["cache"] = str(cache.root.resolve())
        synthetic = cache.manifest.get("synthetic")
        synthetic_from = [synthetic["source_ct"]] if isinstance(synthetic, dict) and synthetic.get("source_ct") else []
    if synthetic_from:
        trained_on["synthetic_from"] = list(dict.fromkeys(synthetic_from))
    if init_from is not None and start == 0:  # what the starting weights saw was seen by these too
        trained_on = with_initial_record(trained_on, str(init_from), init_card.get("trained_on") or {})
    if start > 0:
        trained_on = merge_training_record(_previous_record(out, stage), trained_on)
    bar = None
    if progress and info.main:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc=f"train {stage}", unit="step")
    t_last = time.time()
    loss_value = math.nan
    bad_steps = skipped = 0
    for step in range(start, tc.steps):
        model.train()
        batch = _to(maker.batch(step, tc.batch_size, tc.seed, info.rank), dev)
        gen = step_generator(tc.seed, step, info.rank, stream=2)
        if coarse is not None:
            with precision.autocast(dev):
                batch["cond"] = coarse_condition(coarse, batch, tc.controlnet_cond_steps, gen).float()
        with precision.autocast(dev):
            loss, logs = loss_module(batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip))
        loss_value = float(loss.detach())
        if math.isfinite(grad_norm) and math.isfinite(loss_value):
            opt.step()
            ema.update(params, step)
            bad_steps = 0
        else:  # a reduced-precision overflow: skip this update, as AMP loss scaling does
            bad_steps += 1
            skipped += 1
            log(f"step {step + 1}: non-finite loss or gradient ({loss_value}, {grad_norm}); update skipped")
            if bad_steps >= 5:
                raise RuntimeError(f"5 consecutive non-finite steps at step {step + 1}; lower the learning rate, "
                                   "use --precision fp32, or check the data")
        done = step + 1
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if info.main and (done % tc.log_every == 0 or done == tc.steps):
            now = time.time()
            _append_csv(out / "train_log.csv", {"step": done, "loss": loss_value, "grad_norm": grad_norm,
                                                "lr": tc.lr, "sec_per_step": (now - t_last) / tc.log_every,
                                                **{k: v for k, v in logs.items() if k != "loss"}})
            run.record(out / "train_log.csv")
            t_last = now
        if info.main and (done % tc.checkpoint_every == 0 or done == tc.steps):
            _checkpoint(out, stage, model, opt, ema, params, preset, done, trained_on)
            run.record(out / "resume.pt", out / f"{stage}.safetensors", out / f"{stage}.json")
            run.keep()
        if info.main and (done % tc.validate_every == 0 or done == tc.steps):
            with ema.applied(params):
                _validate(stage, model, coarse, val_maker, val_ids[: tc.val_cases], val_label, preset, dev, out, done)
            run.record(out / "val_log.csv")
    if bar:
        bar.close()
    summary = {"stage": stage, "steps": tc.steps, "final_loss": loss_value if math.isfinite(loss_value) else None, "world_size": info.world,
               "skipped_nonfinite_steps": skipped, "device": str(dev), "precision": precision.to_dict()}
    checksum = params_checksum(params)
    if info.world > 1:
        gathered = [None] * info.world
        dist.all_gather_object(gathered, checksum)
        summary["rank_param_checksums"] = gathered
        summary["ranks_agree"] = len(set(gathered)) == 1
    else:
        summary["rank_param_checksums"] = [checksum]
        summary["ranks_agree"] = True
    if info.main:
        write_text(out / "train_summary.json", json.dumps(summary, indent=2))
        run.record(out / "train_summary.json")
    if info.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


INPUT_TABLE_SAMPLES = 48
INPUT_TABLE_QUANTILES = 256


def with_input_tables(preset: ModelPreset, maker: BatchMaker, log: Callable[[str], None] = print) -> ModelPreset:
    """The preset with Stage I's "matched" input domain measured: mean quantiles of each view over
    training inputs (augmentation and realism as in training, a fixed seed, so a resumed or
    distributed run measures the same tables). Inference maps every radiograph onto them."""
    cfg = preset.coarse
    if cfg.input_domain != "matched" or cfg.input_tables:
        return preset
    probs = torch.linspace(0.0, 1.0, INPUT_TABLE_QUANTILES)
    total = torch.zeros(2, INPUT_TABLE_QUANTILES)
    for i in range(INPUT_TABLE_SAMPLES):
        views = maker.batch(i, 1, seed=preset.train.seed + 104729)["views"][0].float()
        total += torch.quantile(views.reshape(2, -1), probs, dim=1).T
    tables = total / INPUT_TABLE_SAMPLES
    log(f"Stage I input domain: grey-value quantiles of {INPUT_TABLE_SAMPLES} training views measured")
    return dataclasses.replace(preset, coarse=dataclasses.replace(cfg, input_tables=tuple(
        tuple(round(float(v), 6) for v in t) for t in tables)))


def _saved_input_tables(out: Path):
    """Stage I's input tables of the run being resumed in ``out`` (its config.json), if it has any."""
    try:
        coarse = json.loads((out / "config.json").read_text())["coarse"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(coarse, dict) or coarse.get("input_domain") != "matched":
        return None
    return coarse.get("input_tables") or None


def _previous_record(out: Path, stage: str) -> dict:
    card = out / f"{stage}.json"
    if not card.exists():
        return {}
    try:
        return json.loads(card.read_text()).get("trained_on", {})
    except (OSError, json.JSONDecodeError):
        return {}


def _initial_state(init_from, stage: str) -> tuple[dict, dict, Path]:
    """The weights a fine-tuning run starts from, their card and file. A published weights folder
    holds no prior.safetensors: its frozen prior is saved inside controlnet.safetensors."""
    from axonct.pipeline.checkpoint import load_stage, stage_paths

    own, _ = stage_paths(init_from, stage)
    inside, _ = stage_paths(init_from, "controlnet")
    if stage == "prior" and not own.exists() and inside.exists():
        state, card = load_stage(init_from, "controlnet")
        return {k[len("prior."):]: v for k, v in state.items() if k.startswith("prior.")}, card, inside
    state, card = load_stage(init_from, stage)
    return state, card, own


def merge_training_record(previous: dict, current: dict) -> dict:
    """A run resumed on another cache keeps what the earlier part saw: the union of the cases
    (so "seen in training" stays true for them), every cache, and every synthetic source CT."""
    if not previous:
        return current
    merged = dict(current)
    merged["cases"] = list(dict.fromkeys([*previous.get("cases", []), *current.get("cases", [])]))
    merged["caches"] = list(dict.fromkeys([*_caches(previous), *_caches(current)]))
    sources = [*previous.get("synthetic_from", []), *current.get("synthetic_from", [])]
    if sources:
        merged["synthetic_from"] = list(dict.fromkeys(sources))
    if "initialised_from" in previous:
        merged.setdefault("initialised_from", previous["initialised_from"])
    return merged


def with_initial_record(current: dict, weights: str, initial: dict) -> dict:
    """A fine-tuning run's record: its own cases plus every case, cache and synthetic source of the
    weights it started from (so "seen in training" stays true for them), and where those came from."""
    merged = merge_training_record(initial, current)
    merged["initialised_from"] = {"weights": weights, "steps": initial.get("steps_done", initial.get("steps")),
                                  "caches": _caches(initial)}
    return merged


def _caches(record: dict) -> list:
    """Every cache a training record names (older records name one, as ``cache``)."""
    return record.get("caches") or ([record["cache"]] if record.get("cache") else [])


def _resumable(preset_dict: dict) -> dict:
    """The parts of a config a resumed run must share (steps and cadences may change)."""
    d = json.loads(json.dumps(preset_dict))
    for k in ("steps", "checkpoint_every", "validate_every", "log_every", "val_cases", "precision", "amp"):
        d["train"].pop(k, None)
    return d


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _checkpoint(out, stage, model, opt, ema, params, preset, step, trained_on) -> None:
    state = {"stage": stage, "preset": preset.to_dict(), "step": step, "model": model.state_dict(),
             "optimizer": opt.state_dict(), "ema": [s.cpu() for s in ema.shadow]}
    with atomic_path(out / "resume.pt") as tmp:
        torch.save(state, tmp)
    with ema.applied(params):
        save_stage(out, stage, model.state_dict(), preset, dict(trained_on, steps_done=step))


@torch.no_grad()
def _validate(stage, model, coarse, maker, case_ids, label, preset, dev, out, step) -> None:
    model.eval()
    batch = _to(maker.fixed(case_ids), dev)
    gen = torch.Generator().manual_seed(1234)
    if stage == "coarse":
        pred, target = model.sample(batch["views"], batch["view_mask"], generator=gen), batch["x0"]
    elif stage == "baseline":
        pred, target = model(batch["views"], batch["view_mask"]), batch["x0"]
    elif stage == "prior":
        pred, target = model.sample(tuple(batch["x0"].shape), gen), None
    elif stage == "controlnet":
        cond = coarse.sample(batch["views"], batch["view_mask"], generator=gen)
        pred, target = model.sample(cond, gen), batch["x0"]
    else:
        from axonct.models.sr import upsample_tiled

        pred = upsample_tiled(model, batch["x0"], preset.sr.tile, preset.sr.tile_overlap)
        target = batch["x0_hi"]
    unit = lambda v: ((v.float() + 1) / 2).clamp(0, 1).cpu()  # noqa: E731
    rows, row = [], {"step": step, "cases": " ".join(case_ids), "cases_are": label}
    if target is not None:
        p, t = unit(pred), unit(target)
        row["psnr"] = sum(psnr(p[i], t[i]) for i in range(len(p))) / len(p)
        row["ssim"] = sum(ssim(p[i, 0], t[i, 0]) for i in range(len(p))) / len(p)
        for name, vol in (("truth", t[0, 0]), ("prediction", p[0, 0]), ("|difference|", (p[0, 0] - t[0, 0]).abs())):
            rows.append([(f"{name} {k}", v) for k, v in orthogonal_slices(vol.numpy()).items()])
    else:
        p = unit(pred)
        row["sample_mean"], row["sample_std"] = float(p.mean()), float(p.std())
        rows.append([(f"sample {k}", v) for k, v in orthogonal_slices(p[0, 0].numpy()).items()])
    _append_csv(out / "val_log.csv", row)
    save_montage(rows, out / "val_montages" / f"step{step:07d}.png", tile=128)
