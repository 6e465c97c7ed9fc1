"""The three stages as one reconstruction: radiographs -> Stage I -> Stage II -> Stage III -> HU volume.

`AxonPipeline.__call__` is the one entry point, like a diffusers pipeline: radiographs (files or
`Radiograph`s) and one `ReconstructOptions` in, one `ReconstructionOutput` out (the volume with its
geometry, how the views were framed, the checks and warnings). `axon reconstruct`, the Slicer
worker, `axon demo` and every `axon evaluate` mode call it, so what is measured is what users run.
`reconstruct` below it is the sampling core on already framed model views.

Progress goes to a callback (`ProgressFn`) with the stage, the step and the running samples as
separate fields; `work_plan` says in advance how many such units a run has. Turning them into lines
for a follower, and the cancel check, belong to the application (`axonct.app.protocol`): a callback
that raises stops the run at the next step.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from axonct.pipeline.checkpoint import read_card
from axonct.io.ct_preprocess import ModelVolume
from axonct.errors import AxonInputError
from axonct.presets import ModelPreset
from axonct.io.radiograph import Radiograph, read_radiograph
from axonct.options import ReconstructOptions
from axonct.runtime import Precision, resolve_precision

if TYPE_CHECKING:
    from axonct.pipeline.framing import Framing

STAGE_ORDER = ("coarse", "fine", "sr")


class ProgressFn(Protocol):
    """``progress(stage, step, total, sample=..., samples=..., batch=..., phase=...)``: step ``step``
    (0-based) of ``total`` of ``stage`` is done for the samples ``sample`` (1-based, the first of the
    running batch) .. ``sample + batch - 1`` of ``samples``. ``phase="calibration"``: the consistency
    calibration of ``stage`` for that batch (step 0 of 1). A plain ``fn(stage, step, total)`` works too
    (it is not told about samples or calibrations)."""

    def __call__(self, stage: str, step: int, total: int, **fields) -> None: ...


def _progress_callback(fn) -> Callable[..., None]:
    """``fn`` itself when it takes the sample fields; a 3-argument callback gets only network steps."""
    if fn is None:
        return lambda *args, **kwargs: None
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn
    if any(p.kind is p.VAR_KEYWORD for p in params) or {"sample", "samples", "batch", "phase"} <= {p.name for p in params}:
        return fn

    def plain(stage, step, total, phase=None, **_):
        if phase != "calibration":
            fn(stage, step, total)

    return plain


@dataclass
class Reconstruction:
    mean: np.ndarray  # [S, S, S] unit volume on the final grid
    std: np.ndarray | None  # voxel-wise std over samples (unit), when samples > 1
    cuts: dict[str, np.ndarray]  # mean unit volume after each stage, at that stage's grid
    preset: ModelPreset
    views: np.ndarray  # [2, P, P] model input views
    view_mask: np.ndarray  # [2]
    seconds: dict[str, float]
    consistency: dict | None = None  # calibration per view and residuals, when consistency was on
    size_factor: float = 1.0  # the patient's size relative to the training CT (`framing`): scales the voxels

    @property
    def output_grid(self):
        """The final grid in the patient's millimetres: framing normalised the size away."""
        grid = self.preset.data.grid
        return dataclasses.replace(grid, fov_mm=grid.fov_mm * self.size_factor)

    def volume(self, array: np.ndarray | None = None) -> ModelVolume:
        """The result (or another final-grid array) on the output grid, centred at the isocenter."""
        return ModelVolume(np.ascontiguousarray(self.mean if array is None else array, np.float32),
                           (0.0, 0.0, 0.0), self.output_grid)


@dataclass
class ReconstructionOutput:
    """What one call of the pipeline gives: the reconstruction, how its inputs were framed, the
    lung-field probabilities of the framed views (None without a lung-field network), and the checks
    a report shows (framing, input domain, lung-field agreement, chest plausibility, warnings)."""

    reconstruction: Reconstruction
    framing: "Framing"
    lung_fields: np.ndarray | None
    checks: dict
    options: ReconstructOptions

    @property
    def warnings(self) -> list[str]:
        return self.checks["warnings"]

    @property
    def mean(self) -> np.ndarray:
        return self.reconstruction.mean

    def volume(self, array: np.ndarray | None = None) -> ModelVolume:
        """The mean (or another final-grid unit array) with the output's physical geometry."""
        return self.reconstruction.volume(array)

    def image(self, array: np.ndarray | None = None):
        """The mean (or another final-grid unit array) as a SimpleITK HU image with its geometry."""
        return self.volume(array).to_hu_image()

    def std_image(self):
        """The voxel-wise standard deviation over samples in HU (zeros for one sample), on the same grid."""
        import SimpleITK as sitk

        rec = self.reconstruction
        grid = rec.preset.data.grid
        std = rec.std if rec.std is not None else np.zeros_like(rec.mean)
        img = sitk.GetImageFromArray((std * (grid.hu_max - grid.hu_min)).astype(np.float32))
        img.CopyInformation(self.image())
        return img


def consistency_config(options: ReconstructOptions):
    """The `ConsistencyConfig` the options ask for (None when consistency is off): built here only."""
    if not options.consistency:
        return None
    from axonct.guidance.consistency import ConsistencyConfig

    return ConsistencyConfig(strength=options.consistency_strength)


class AxonPipeline:
    """The three trained stages on one device; `load` reads them from a weights folder, calling the
    pipeline reconstructs (`__call__`)."""

    def __init__(self, preset: ModelPreset, coarse, fine, sr, device: str | torch.device = "cpu",
                 cards: dict | None = None, precision: str | Precision = "auto", sampling=None):
        from axonct.pipeline.loading import SamplingDefaults

        self.preset, self.coarse, self.fine, self.sr = preset, coarse, fine, sr
        self.sampling = sampling or SamplingDefaults.from_preset(preset)
        self.device = torch.device(device)
        self.precision = precision if isinstance(precision, Precision) else resolve_precision(precision, self.device)
        if self.device.type == "cuda":  # shapes stay fixed through the sampling loops: autotune once
            torch.backends.cudnn.benchmark = True
        self.cards = cards or {}
        self.lung_fields = None  # a `models.lung_fields.LungFieldSegmenter`, when the weights have one

    @classmethod
    def load(cls, weights_dir: str | Path, device: str | torch.device = "cpu",
             precision: str | Precision = "auto") -> "AxonPipeline":
        from axonct.pipeline.loading import SamplingDefaults, load_trained_stage

        weights_dir = Path(weights_dir)
        if not weights_dir.is_dir():
            raise AxonInputError(weights_dir, "weights folder not found (pass --weights DIR holding "
                                              "coarse/controlnet/sr .safetensors and .json)")
        card = read_card(weights_dir, "coarse")
        preset = ModelPreset.from_dict(card["config"])
        stages = [load_trained_stage(s, weights_dir, preset, device) for s in ("coarse", "controlnet", "sr")]
        cards = {s: read_card(weights_dir, s) for s in ("coarse", "controlnet", "sr")}
        pipeline = cls(preset, *stages, device=device, cards=cards, precision=precision,
                       sampling=SamplingDefaults.load(weights_dir, preset))
        from axonct.models.lung_fields import load_lung_field_segmenter

        pipeline.lung_fields = load_lung_field_segmenter(weights_dir)
        return pipeline

    @classmethod
    def untrained(cls, preset: ModelPreset, device: str | torch.device = "cpu",
                  precision: str | Precision = "auto") -> "AxonPipeline":
        """Randomly initialised stages: same cost as trained ones (for benchmarks)."""
        from axonct.pipeline.loading import build_stage

        torch.manual_seed(0)
        prior_stage = build_stage("controlnet", preset)
        stages = [build_stage("coarse", preset), prior_stage, build_stage("sr", preset)]
        return cls(preset, *[m.to(device).eval() for m in stages], device=device, precision=precision)

    # ------------------------------------------------------------------ the one entry point
    def __call__(self, frontal, lateral=None, options: ReconstructOptions | None = None,
                 progress: ProgressFn | None = None, message: Callable[[str], None] | None = None,
                 stop_after: str = "sr") -> ReconstructionOutput:
        """Radiographs -> `ReconstructionOutput`, with the options' defaults exactly as `axon
        reconstruct` runs them. ``frontal``/``lateral``: paths, `Radiograph`s (e.g. DRRs made by
        `framing.model_view_radiographs`) or 2-D arrays. ``options.device``/``precision`` are those of
        the loaded pipeline (`load`) and are not changed here. ``message(text)`` receives the framing
        summary; the warnings are in the output's checks, said once by whoever reports them.
        ``stop_after`` cuts the run after a stage (evaluation ablations)."""
        from axonct.pipeline.quality import framing_summary, input_checks

        opts = (options or ReconstructOptions()).validate()
        say = message or (lambda text: None)
        frontal, lateral = _as_radiograph(frontal, "frontal"), _as_radiograph(lateral, "lateral")
        if lateral is not None and np.array_equal(frontal.pixels, lateral.pixels):
            raise AxonInputError(lateral.source or None, "is the same image as the frontal view; give the lateral "
                                                         "radiograph, or leave the lateral out")
        views, mask, frame, fields = self.framed_views(frontal, lateral, opts.framing, opts.thorax_width_mm)
        say(framing_summary(frame))
        start = None
        if opts.start == "template":
            from axonct.guidance.template_fit import fit_template

            say("fitting the template CT to the input views")
            start = fit_template(views, mask, self.preset.data, progress=progress).unit
        guided_fields = fields if (fields is not None and opts.lung_fields and opts.consistency) else None
        rec = self.reconstruct(views, mask, steps=opts.steps, samples=opts.samples, seed=opts.seed,
                               progress=progress, stop_after=stop_after, consistency=consistency_config(opts),
                               start=start, fine_strength=opts.fine_strength, lung_fields=guided_fields,
                               size_factor=frame.size_factor, pinned=frame.pinned())
        checks = input_checks(rec, frame, fields)
        return ReconstructionOutput(rec, frame, fields, checks, opts)

    def run_plan(self, options: ReconstructOptions | None = None) -> dict[str, int]:
        """The work units of `__call__` with these options per phase, in order: template fit
        iterations (``start="template"``), then `work_plan` (calibrations, coarse and fine steps, SR
        tiles, each x K), so a follower's one progress bar can cover the whole run."""
        opts = options or ReconstructOptions()
        plan: dict[str, int] = {}
        if opts.start == "template":
            from axonct.guidance.template_fit import AFFINE_ITERS, DEFORM_ITERS

            plan["template"] = AFFINE_ITERS + DEFORM_ITERS
        plan.update(self.work_plan(opts.steps, opts.samples, consistency=consistency_config(opts),
                                   start=opts.start == "template", fine_strength=opts.fine_strength))
        return plan

    # ------------------------------------------------------------------ inputs
    def framed_views(self, frontal: str | Path | Radiograph, lateral: str | Path | Radiograph | None = None,
                     framing: str = "auto", thorax_width_mm: float | None = None):
        """Views framed like the training DRRs (`pipeline.framing`): ([2, P, P] views, [2] mask,
        `Framing`, [2, P, P] lung-field probabilities of the framed views or None without a
        lung-field network)."""
        from axonct.pipeline.framing import frame_inputs

        views, mask, frame = frame_inputs(_as_radiograph(frontal, "frontal"), _as_radiograph(lateral, "lateral"),
                                          self.preset.data, self.lung_fields, framing, thorax_width_mm)
        probs = None
        if self.lung_fields is not None:
            probs = np.zeros_like(views)
            for i in range(2):
                if mask[i] > 0:
                    probs[i] = self.lung_fields.probabilities(views[i])
        return views, mask, frame, probs

    # ------------------------------------------------------------------ the run
    def _autocast(self):
        return self.precision.autocast(self.device)

    def reconstruct(self, views: np.ndarray, view_mask: np.ndarray, steps: int | None = None,
                    samples: int = 1, seed: int = 0, progress: ProgressFn | None = None,
                    stop_after: str = "sr", coarse_guidance=None, fine_guidance=None,
                    consistency=None, start=None, fine_strength: float | None = None,
                    batch_size: int | None = None, lung_fields: np.ndarray | None = None,
                    lung_guidance=None, size_factor: float = 1.0, pinned=(False, False)) -> Reconstruction:
        """``consistency``: a `consistency.ConsistencyConfig` to steer both samplers towards agreement
        with the input views (replaces the guidance arguments). ``start``: an optional [S,S,S] unit
        volume on the final grid (e.g. a template fit) that replaces Stage I's output as Stage II's
        starting point. ``steps``/``fine_strength``: default to the weights' `SamplingDefaults`.
        ``batch_size``: samples drawn together (default: all K at once on a GPU, halved on out-of-memory;
        one at a time on a CPU). Sample k's noise comes from its own generator, so batching does not
        change results, and mean/std are accumulated as samples finish: memory does not grow with K.
        ``lung_fields``: [2, P, P] lung-field probabilities of the views; with consistency on, sampling
        also keeps air behind the lung fields and out of the rest (`guidance.lung_fields`), with
        ``lung_guidance`` (a `LungGuidanceConfig`) or its defaults. ``size_factor``: the patient's size
        relative to the training CT, from framing (the output's voxel size). ``pinned``: per view,
        whether it is in the model's own projection geometry (`Framing.pinned`), so consistency
        fits its intensity only, not its scale and position."""
        if samples < 1:
            raise AxonInputError(None, "--samples must be at least 1")
        self.check_steps(steps)
        if stop_after not in STAGE_ORDER:
            raise ValueError(f"stop_after must be one of {STAGE_ORDER}")
        progress = _progress_callback(progress)
        v = torch.from_numpy(views)[None].to(self.device)
        m = torch.from_numpy(view_mask)[None].to(self.device)
        seconds = {k: 0.0 for k in STAGE_ORDER}
        coarse_steps = steps or self.sampling.coarse_steps
        fine_steps = steps or self.sampling.fine_steps
        fine_strength = self.sampling.fine_strength if fine_strength is None else fine_strength
        checker = None
        if consistency is not None:
            from axonct.guidance.consistency import ViewConsistency

            checker = ViewConsistency(views, view_mask, self.preset.data.diffusion_grid(self.preset.sr.factor),
                                      self.preset.data.geometry, consistency, pinned=pinned)
            if lung_fields is not None:
                from axonct.guidance.lung_fields import LungFieldGuidance
                from axonct.physics.sparse_projector import downsample_view_image

                p = checker.observed[0].shape[-1]
                probs = np.stack([downsample_view_image(np.asarray(lung_fields[i], np.float32), p)
                                  for i in checker.present])
                checker.lung_fields = LungFieldGuidance(probs, checker.projector, checker.grid, lung_guidance)
            coarse_guidance = checker.bridge_guidance(self.coarse.scheduler)
            fine_guidance = checker.cg_guidance()
        start_lo = None
        if start is not None:
            s_t = torch.from_numpy(np.ascontiguousarray(start, np.float32))[None, None] * 2 - 1
            f = self.preset.sr.factor
            start_lo = (F.avg_pool3d(s_t, f) if f > 1 else s_t).to(self.device)
        stats = {k: RunningMoments() for k in STAGE_ORDER}
        k = 0
        batch = self._sample_batch(samples, batch_size)
        while k < samples:
            n = min(batch, samples - k)
            if checker is not None:  # each batch calibrates afresh; the plan counts these
                checker.restart(on_calibrate=lambda stage, first=k, n=n: progress(
                    stage, 0, 1, sample=first + 1, samples=samples, batch=n, phase="calibration"))
            try:
                outs = self._sample_chunk(v, m, k, n, samples, seed, start_lo, coarse_steps, fine_steps,
                                          coarse_guidance, fine_guidance, fine_strength, stop_after, progress,
                                          seconds)
            except Exception as exc:  # a GPU batch that does not fit: halve it and redo this chunk
                if n == 1 or self.device.type != "cuda" or not is_out_of_memory(exc):
                    raise
                torch.cuda.empty_cache()
                batch = max(1, n // 2)
                continue
            for name, x in outs.items():
                stats[name].add(((x.float() + 1) / 2).clamp(0, 1).cpu())
            k += n
        self.last_batch = batch
        cuts = {name: st.mean[0, 0].numpy() for name, st in stats.items() if st.count}
        last = stats[stop_after]
        mean_t = last.mean
        final = mean_t if stop_after == "sr" else to_final_grid(mean_t, self.preset.data.grid.size)
        mean = final[0, 0].numpy()
        std = None
        if samples > 1:
            std_t = last.std()
            std = (std_t if stop_after == "sr" else to_final_grid(std_t, self.preset.data.grid.size))[0, 0].numpy()
        report = checker.report(mean) if checker is not None else None
        return Reconstruction(mean, std, cuts, self.preset, views, view_mask, seconds, report, float(size_factor))

    def work_plan(self, steps: int | None = None, samples: int = 1, consistency=None, start: bool = False,
                  fine_strength: float | None = None, stop_after: str = "sr") -> dict[str, int]:
        """The work units `reconstruct` with these arguments reports through its progress callback, per
        phase in run order: ``calibration`` (one per sample and guided stage, when ``consistency`` has a
        strength above 0), ``coarse`` and ``fine`` sampling steps x samples (no ``coarse`` when a
        ``start`` volume replaces Stage I), ``sr`` tiles x samples. Independent of the batching."""
        self.check_steps(steps)
        coarse_steps = int(steps or self.sampling.coarse_steps)
        fine_steps = int(steps or self.sampling.fine_steps)
        fine_strength = self.sampling.fine_strength if fine_strength is None else fine_strength
        stages = [s for s in STAGE_ORDER[:STAGE_ORDER.index(stop_after) + 1] if not (start and s == "coarse")]
        plan: dict[str, int] = {}
        if consistency is not None and consistency.strength > 0:
            plan["calibration"] = samples * len([s for s in stages if s != "sr"])
        if "coarse" in stages:
            plan["coarse"] = samples * coarse_steps  # the bridge makes exactly num_steps model calls
        if "fine" in stages:
            plan["fine"] = samples * len(self.fine.sampling_timesteps(fine_steps, fine_strength))
        if "sr" in stages:
            from axonct.models.sr import tile_count

            size = self.preset.data.diffusion_grid(self.preset.sr.factor).size
            plan["sr"] = samples * tile_count(self.sr, (size, size, size))
        return plan

    def check_steps(self, steps: int | None) -> None:
        """Refuse more sampling steps than a stage has training timesteps (a scheduler cannot visit more)."""
        if steps is None:
            return
        limit = min(int(self.coarse.scheduler.num_train_timesteps), int(self.fine.schedule.num_train_timesteps))
        if not 1 <= int(steps) <= limit:
            raise AxonInputError(None, f"--steps must be from 1 to {limit}, the weights' training timesteps "
                                       f"(got {steps})")

    def _sample_batch(self, samples: int, batch_size: int | None) -> int:
        if batch_size is not None:
            if batch_size < 1:
                raise AxonInputError(None, "batch size must be at least 1")
            return min(int(batch_size), samples)
        return samples if self.device.type == "cuda" else 1

    def _sample_chunk(self, v, m, first, n, samples, seed, start_lo, coarse_steps, fine_steps, coarse_guidance,
                      fine_guidance, fine_strength, stop_after, progress, seconds) -> dict[str, torch.Tensor]:
        """Samples first..first+n-1 as one batch through the stages; returns each stage's output."""
        gens = [torch.Generator().manual_seed(int(seed) * 1000 + first + j) for j in range(n)]
        gen = gens[0] if n == 1 else gens
        fields = dict(sample=first + 1, samples=samples, batch=n)
        outs: dict[str, torch.Tensor] = {}
        vb, mb = v.expand(n, *v.shape[1:]), m.expand(n, *m.shape[1:])
        with torch.no_grad(), self._autocast():
            t = time.time()
            if start_lo is not None:  # Stage I is not run: Stage II starts from the given volume
                x = start_lo.expand(n, *start_lo.shape[1:]).clone()
            else:
                x = self.coarse.sample(vb, mb, num_steps=coarse_steps, generator=gen, guidance=coarse_guidance,
                                       progress=lambda i, total: progress("coarse", i, total, **fields)).float()
            self._sync()
            seconds["coarse"] += time.time() - t
            outs["coarse"] = x
            if stop_after != "coarse":
                t = time.time()
                x = self.fine.sample(x, gen, num_steps=fine_steps, guidance=fine_guidance,
                                     start_strength=fine_strength,
                                     progress=lambda i, total: progress("fine", i, total, **fields)).float()
                self._sync()
                seconds["fine"] += time.time() - t
                outs["fine"] = x
            if stop_after == "sr":
                from axonct.models.sr import upsample_tiled

                t = time.time()
                x = upsample_tiled(self.sr, x, progress=lambda i, total: progress("sr", i, total, **fields)).float()
                self._sync()
                seconds["sr"] += time.time() - t
                outs["sr"] = x
        return outs

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class RunningMoments:
    """Mean and unbiased std of volumes added batch by batch (Chan/Welford), on the CPU in float64:
    K samples cost the memory of one, not K."""

    def __init__(self):
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, batch: torch.Tensor) -> None:
        b = batch.to(torch.float64)
        n_b = b.shape[0]
        mean_b = b.mean(0, keepdim=True)
        m2_b = ((b - mean_b) ** 2).sum(0, keepdim=True)
        if self._mean is None:
            self._mean, self._m2, self.count = mean_b, m2_b, n_b
            return
        n = self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + delta**2 * (self.count * n_b / n)
        self.count = n

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.float()

    def std(self) -> torch.Tensor:
        return (self._m2 / max(self.count - 1, 1)).sqrt().float()


def _as_radiograph(item, view: str) -> Radiograph | None:
    if item is None or isinstance(item, Radiograph):
        return item
    if isinstance(item, (str, Path)):
        return read_radiograph(item, view=view)
    return Radiograph(pixels=np.asarray(item, np.float32), view=view)


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def to_final_grid(unit: torch.Tensor, size: int) -> torch.Tensor:
    """Trilinear resize of a coarser stage's output, only to compare stage cuts on one grid."""
    if unit.shape[-1] == size:
        return unit
    return F.interpolate(unit, size=(size,) * 3, mode="trilinear", align_corners=False)
