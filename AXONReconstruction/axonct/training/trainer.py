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


@dataclass
class _Session:
    """What one training process works with: the stage's model and optimiser, the data, where it
    writes, and how it logs (the pieces `_train` hands from setup to the loop to the summary)."""

    stage: str
    preset: ModelPreset
    out: Path
    run: RunFolder | None
    info: DistInfo
    dev: torch.device
    precision: object  # runtime's resolved precision (autocast context, to_dict)
    log: Callable[[str], None]
    maker: BatchMaker | None = None
    val_maker: BatchMaker | None = None
    val_ids: list | None = None
    val_label: str = ""
    model: nn.Module | None = None
    coarse: nn.Module | None = None
    params: list | None = None
    loss_module: nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    ema: EMA | None = None


def _check_train_numbers(tc) -> None:
    """Steps and batch size are whole numbers >= 1 (a config file can hold anything)."""
    for name, value in (("steps", tc.steps), ("batch_size", tc.batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AxonInputError(None, f"train.{name} must be a whole number of at least 1, not {value!r}")


def _open_data(s: _Session, data, resume: bool):
    """The cache, its training case ids, and the batch makers; for Stage I the input tables (a
    resumed run keeps the tables it started with: another CPU may round differently)."""
    tc = s.preset.train
    cache = open_caches(data, expected=s.preset.data)
    train_ids = cache.case_ids("train") or cache.case_ids("all")
    s.val_ids, s.val_label = cache.case_ids("val"), "held-out (val split)"
    if not s.val_ids:
        s.val_ids, s.val_label = train_ids, "seen in training (the cache has no val split)"
    aug = Augmentation(spatial=tc.augment_spatial, clean_probability=float(tc.clean_view_probability))
    if not tc.augment_realism:
        aug.realism = None
    s.maker = BatchMaker(cache, train_ids, s.preset.sr.factor, aug)
    s.val_maker = BatchMaker(cache, s.val_ids[: tc.val_cases], s.preset.sr.factor, Augmentation.none())
    if s.stage == "coarse":
        saved = _saved_input_tables(s.out) if resume else None
        if saved is None:
            s.preset = with_input_tables(s.preset, s.maker, s.log)
        else:
            try:  # CoarseConfig checks the tables
                s.preset = dataclasses.replace(s.preset, coarse=dataclasses.replace(s.preset.coarse,
                                                                                    input_tables=saved))
            except (TypeError, ValueError) as exc:
                raise AxonInputError(s.out / "config.json", f"holds unusable Stage I input tables ({exc}); the run "
                                                            "cannot be resumed") from None
    return cache, train_ids


def _build_model(s: _Session, prior_dir, coarse_dir) -> None:
    """The stage's model (seeded), ControlNet's frozen Stage I, the loss (DDP-wrapped across
    processes), AdamW and the EMA."""
    tc = s.preset.train
    if s.stage == "controlnet" and (prior_dir is None or coarse_dir is None):
        raise AxonInputError(None, "controlnet training needs the trained prior and coarse stages: "
                                   "--prior RUN_DIR --coarse RUN_DIR")
    torch.manual_seed(tc.seed)
    s.model = build_stage(s.stage, s.preset, prior_dir).to(s.dev)
    s.coarse = load_trained_stage("coarse", coarse_dir, s.preset, s.dev) if s.stage == "controlnet" else None
    s.params = trainable_parameters(s.stage, s.model)
    s.loss_module = StageLoss(s.stage, s.model, s.preset, s.coarse)
    if s.info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        s.loss_module = DistributedDataParallel(s.loss_module,
                                                device_ids=[s.dev.index] if s.dev.type == "cuda" else None)
    s.opt = torch.optim.AdamW(s.params, lr=tc.lr, weight_decay=tc.weight_decay)
    s.ema = EMA(s.params, tc.ema_decay)


def _starting_point(s: _Session, resume: bool, init_from) -> tuple[int, dict]:
    """(first step, card of the initial weights): a resumed run's state, or weights to fine-tune
    from; refuses to overwrite a run that is not being resumed."""
    state_path = s.out / "resume.pt"
    start, init_card = 0, {}
    if state_path.exists() and not resume:
        raise AxonInputError(s.out, "already holds a training run; pass --resume to continue it or choose another --out")
    if resume and state_path.exists():
        state = read_resume(state_path, s.dev)  # a truncated or damaged file: a message, not a traceback
        if state["stage"] != s.stage or _resumable(state["preset"]) != _resumable(s.preset.to_dict()):
            raise AxonInputError(state_path, "was written by a different stage or config; it cannot be resumed with these")
        s.model.load_state_dict(state["model"])
        s.opt.load_state_dict(state["optimizer"])
        s.ema.shadow = [t.to(s.dev) for t in state["ema"]]
        start = state["step"]
        s.log(f"resuming {s.stage} at step {start}")
    elif init_from is not None:
        from axonct.pipeline.checkpoint import load_into

        state, init_card, init_file = _initial_state(init_from, s.stage)
        if s.stage == "controlnet":  # the frozen prior is --prior's, not the one saved beside the old ControlNet
            state = {**state, **{k: v for k, v in s.model.state_dict().items() if k.startswith("prior.")}}
        load_into(s.model, state, init_file)
        s.ema = EMA(s.params, s.preset.train.ema_decay)  # the EMA starts at the loaded weights
        s.log(f"{s.stage} starts from the weights in {init_from}")
    return start, init_card


def _training_record(s: _Session, cache, train_ids, start: int, init_from, init_card: dict) -> dict:
    """What trained these weights (cases, caches, synthetic sources), merged with what a resumed
    run or the fine-tuned weights saw before."""
    tc = s.preset.train
    trained_on = {"cases": train_ids, "steps": tc.steps, "world_size": s.info.world, "seed": tc.seed}
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
        trained_on = merge_training_record(_previous_record(s.out, s.stage), trained_on)
    return trained_on


def _step(s: _Session, step: int) -> tuple[float, float, dict]:
    """One optimiser step on the batch and noise of (seed, step, rank); (loss, grad norm, logs).
    A non-finite loss or gradient (a reduced-precision overflow) skips the update."""
    tc = s.preset.train
    s.model.train()
    batch = _to(s.maker.batch(step, tc.batch_size, tc.seed, s.info.rank), s.dev)
    gen = step_generator(tc.seed, step, s.info.rank, stream=2)
    if s.coarse is not None:
        with s.precision.autocast(s.dev):
            batch["cond"] = coarse_condition(s.coarse, batch, tc.controlnet_cond_steps, gen).float()
    with s.precision.autocast(s.dev):
        loss, logs = s.loss_module(batch, gen)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(s.params, tc.grad_clip))
    loss_value = float(loss.detach())
    if math.isfinite(grad_norm) and math.isfinite(loss_value):
        s.opt.step()
        s.ema.update(s.params, step)
    return loss_value, grad_norm, logs


def _after_step(s: _Session, done: int, loss_value: float, grad_norm: float, logs: dict, t_last: float,
                trained_on: dict) -> float:
    """The main process's cadenced work after a step: the CSV log, checkpoints, validation.
    Returns the time of the last log row."""
    tc, out, run = s.preset.train, s.out, s.run
    if s.info.main and (done % tc.log_every == 0 or done == tc.steps):
        now = time.time()
        _append_csv(out / "train_log.csv", {"step": done, "loss": loss_value, "grad_norm": grad_norm,
                                            "lr": tc.lr, "sec_per_step": (now - t_last) / tc.log_every,
                                            **{k: v for k, v in logs.items() if k != "loss"}})
        run.record(out / "train_log.csv")
        t_last = now
    if s.info.main and (done % tc.checkpoint_every == 0 or done == tc.steps):
        _checkpoint(out, s.stage, s.model, s.opt, s.ema, s.params, s.preset, done, trained_on)
        run.record(out / "resume.pt", out / f"{s.stage}.safetensors", out / f"{s.stage}.json")
        run.keep()
    if s.info.main and (done % tc.validate_every == 0 or done == tc.steps):
        with s.ema.applied(s.params):
            _validate(s.stage, s.model, s.coarse, s.val_maker, s.val_ids[: tc.val_cases], s.val_label, s.preset,
                      s.dev, out, done)
        run.record(out / "val_log.csv")
    return t_last


def _loop(s: _Session, start: int, trained_on: dict, progress: bool) -> tuple[float, int]:
    """Steps ``start`` .. steps; (last loss, skipped steps). Five non-finite steps in a row stop it."""
    tc = s.preset.train
    bar = None
    if progress and s.info.main:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc=f"train {s.stage}", unit="step")
    t_last = time.time()
    loss_value = math.nan
    bad_steps = skipped = 0
    for step in range(start, tc.steps):
        loss_value, grad_norm, logs = _step(s, step)
        if math.isfinite(grad_norm) and math.isfinite(loss_value):
            bad_steps = 0
        else:  # a reduced-precision overflow: skip this update, as AMP loss scaling does
            bad_steps += 1
            skipped += 1
            s.log(f"step {step + 1}: non-finite loss or gradient ({loss_value}, {grad_norm}); update skipped")
            if bad_steps >= 5:
                raise RuntimeError(f"5 consecutive non-finite steps at step {step + 1}; lower the learning rate, "
                                   "use --precision fp32, or check the data")
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        t_last = _after_step(s, step + 1, loss_value, grad_norm, logs, t_last, trained_on)
    if bar:
        bar.close()
    return loss_value, skipped


def _finish(s: _Session, loss_value: float, skipped: int) -> dict:
    """The run's summary, with every rank's parameter checksum (they must agree), written by the
    main process; the process group is closed."""
    tc, info = s.preset.train, s.info
    summary = {"stage": s.stage, "steps": tc.steps, "final_loss": loss_value if math.isfinite(loss_value) else None,
               "world_size": info.world, "skipped_nonfinite_steps": skipped, "device": str(s.dev),
               "precision": s.precision.to_dict()}
    checksum = params_checksum(s.params)
    if info.world > 1:
        gathered = [None] * info.world
        dist.all_gather_object(gathered, checksum)
        summary["rank_param_checksums"] = gathered
        summary["ranks_agree"] = len(set(gathered)) == 1
    else:
        summary["rank_param_checksums"] = [checksum]
        summary["ranks_agree"] = True
    if info.main:
        write_text(s.out / "train_summary.json", json.dumps(summary, indent=2))
        s.run.record(s.out / "train_summary.json")
    if info.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _train(stage, data, preset, out, resume, device, prior_dir, coarse_dir, progress, log, init_from, run) -> dict:
    info = init_distributed(torch.device("cuda" if device.startswith("cuda") else "cpu"))
    dev = resolve_device(device, info)
    _check_train_numbers(preset.train)
    precision = runtime.resolve_precision(preset.train.precision, dev)
    log(f"train {stage} on {dev}, precision {precision}")
    s = _Session(stage, preset, out, run, info, dev, precision, log)
    cache, train_ids = _open_data(s, data, resume)
    _build_model(s, prior_dir, coarse_dir)
    start, init_card = _starting_point(s, resume, init_from)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.json", json.dumps(s.preset.to_dict(), indent=2))
        run.record(out / "config.json")
    trained_on = _training_record(s, cache, train_ids, start, init_from, init_card)
    loss_value, skipped = _loop(s, start, trained_on, progress)
    return _finish(s, loss_value, skipped)


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
    merged["initialised_from"] = {"weights": weights, "steps": record_steps(initial),
                                  "caches": _caches(initial)}
    return merged


def record_steps(record: dict):
    """The steps a training record's weights saw (a checkpoint's ``steps_done``, else the run's ``steps``)."""
    return record.get("steps_done", record.get("steps"))


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
