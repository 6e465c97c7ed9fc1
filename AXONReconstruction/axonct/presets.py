"""Model and training presets: ``tiny`` (tests, minutes on 2 CPU cores), ``cpu`` (the CPU demo:
64^3 diffusion, SR to 128^3) and ``paper`` (128^3 diffusion, SR to 256^3, sized for one 80 GB GPU).

Configs are plain dataclasses and round-trip through JSON/YAML-like dicts, so a run is described by
one file (``axon train --config FILE``).
"""

from __future__ import annotations

import dataclasses
import math
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import DataConfig, data_preset


INPUT_DOMAINS = ("matched", "equalized", "percentile")
PRESET_NAMES = ("tiny", "cpu", "cpu-wide", "paper")


def check_quantile_table(table, what: str = "a quantile table") -> None:
    """A grey-value quantile table: at least 2 finite, non-decreasing values."""
    try:
        values = [float(v) for v in table]
    except (TypeError, ValueError):
        values = []
    if len(values) < 2 or not all(math.isfinite(v) for v in values) or any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"{what} must be 1-D, finite, non-decreasing, with >= 2 entries")


@dataclass
class CoarseConfig:
    """Stage I: view encoders, geometric lifting, fusion, and the Brownian-bridge 3D UNet."""

    encoder_channels: tuple[int, ...] = (16, 32)  # 2D encoder per view
    lifted_channels: int = 8  # feature channels carried into 3D by back-projection
    fusion_channels: int = 16
    unet_channels: tuple[int, ...] = (16, 32, 64)
    unet_res_blocks: int = 1
    unet_attention: tuple[bool, ...] = (False, False, False)
    num_train_timesteps: int = 1000
    m_min: float = 0.001
    m_max: float = 0.999
    variance_scale: float = 1.0  # s in delta_t = 2 s (m_t - m_t^2)
    sample_steps: int = 20
    eta: float = 1.0
    y_loss_weight: float = 1.0  # L1 of the lifted start volume y against the CT
    view_dropout: float = 0.3  # probability of training a sample with the frontal view only
    # The encoders' input domain. "matched": each view's grey values are mapped onto the training
    # views' distribution (`input_tables`, quantiles per view, measured by the trainer), so global
    # processing of a clinical radiograph drops out while the training contrast is kept;
    # "equalized": rank-equalised to [0, 1]; "percentile": as normalised (cards older than this field).
    input_domain: str = "matched"
    input_tables: tuple[tuple[float, ...], ...] = ()  # [frontal, lateral] quantiles, empty until measured

    def __post_init__(self):
        if self.input_domain not in INPUT_DOMAINS:
            raise ValueError(f"coarse.input_domain must be one of {INPUT_DOMAINS}, not {self.input_domain!r}")
        self.input_tables = tuple(tuple(float(v) for v in t) for t in self.input_tables)
        if self.input_tables:
            if len(self.input_tables) != 2:
                raise ValueError("coarse.input_tables needs a frontal and a lateral quantile table")
            for name, t in zip(("frontal", "lateral"), self.input_tables):
                check_quantile_table(t, f"coarse.input_tables ({name})")


@dataclass
class PriorConfig:
    """Stage II: unconditional 3D CT diffusion prior and its ControlNet branch."""

    channels: tuple[int, ...] = (16, 32, 64)
    res_blocks: int = 1
    attention: tuple[bool, ...] = (False, False, False)
    num_head_channels: int = 16
    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: str = "epsilon"
    sample_steps: int = 20
    start_strength: float = 0.6  # 1.0 = start from pure noise; <1 = from a noised Stage I volume
    controlnet_conditioning_channels: tuple[int, ...] = (16,)
    controlnet_scale: float = 1.0


@dataclass
class SRConfig:
    """Stage III: transposed-convolution super-resolution N -> factor * N."""

    factor: int = 2
    channels: int = 32
    blocks: int = 4
    train_patch: int = 32  # low-resolution patch side
    tile: int = 64  # low-resolution tile side at inference
    tile_overlap: int = 12  # at least ~2 * blocks + 4 low-resolution voxels (the net's receptive radius)


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | bf16 | fp32; auto = bf16 only where it is fast (runtime.resolve_precision)
    checkpoint_every: int = 100
    validate_every: int = 100
    log_every: int = 10
    val_cases: int = 2
    seed: int = 0
    augment_spatial: bool = True  # random affine of the CT, DRRs re-rendered after it
    augment_realism: bool = True  # X-ray realism simulation on the views
    clean_view_probability: float = 0.0  # with realism on: share of samples whose views stay clean DRRs
    controlnet_cond_steps: int = 4  # Stage I sampling steps that make ControlNet's training conditioning

    def __post_init__(self):
        if not 0.0 <= float(self.clean_view_probability) <= 1.0:
            raise ValueError(f"clean_view_probability must be in [0, 1], got {self.clean_view_probability}")


@dataclass
class ModelPreset:
    name: str = "tiny"
    data: DataConfig = field(default_factory=lambda: data_preset("tiny"))
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    sr: SRConfig = field(default_factory=SRConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def diffusion_grid(self):
        return self.data.diffusion_grid(self.sr.factor)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelPreset":
        def build(kind, values):
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
            out = {}
            for f in dataclasses.fields(kind):
                if f.name in values:
                    v = values[f.name]
                    out[f.name] = tuple(v) if isinstance(v, list) else v
            return kind(**out)

        return cls(
            name=d.get("name", "custom"),
            data=DataConfig.from_dict(d.get("data", {})),
            coarse=build(CoarseConfig, _legacy_coarse(d.get("coarse", {}))),
            prior=build(PriorConfig, d.get("prior", {})),
            sr=build(SRConfig, d.get("sr", {})),
            train=build(TrainConfig, _legacy_train(d.get("train", {}))),
        )


SAMPLING_ONLY_FIELDS = frozenset({"sample_steps", "eta", "start_strength"})
"""Stage config fields that only steer sampling (their defaults live in a weights folder's
sampling.json); two cards that differ only in these describe the same network."""


CARD_CARRIED_FIELDS = frozenset({"input_domain", "input_tables"})
"""Stage config fields that belong to the trained weights: loading takes them from the weights'
card whatever preset asked for the stage (`pipeline.loading.load_trained_stage`)."""


def network_config(cfg) -> dict:
    """A stage config without its sampling-only and card-carried fields: what must match for
    weights to fit."""
    skip = SAMPLING_ONLY_FIELDS | CARD_CARRIED_FIELDS
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


def _legacy_coarse(values: dict) -> dict:
    """Cards written before `input_domain` existed trained on percentile-normalised views."""
    values = dict(values)
    if values and "input_domain" not in values:
        values["input_domain"] = "percentile"
    return values


def _legacy_train(values: dict) -> dict:
    """Cards written before `precision` replaced `amp` ("auto" | "bf16" | "off") still load."""
    values = dict(values)
    if "amp" in values:
        old = values.pop("amp")
        values.setdefault("precision", {"off": "fp32"}.get(old, old))
    return values


def model_preset(name: str) -> ModelPreset:
    if name == "tiny":
        return ModelPreset(
            name="tiny",
            data=data_preset("tiny"),
            coarse=CoarseConfig(encoder_channels=(8, 16), lifted_channels=8, fusion_channels=8,
                                unet_channels=(16, 32, 32), sample_steps=10),
            prior=PriorConfig(channels=(16, 32, 32), sample_steps=10, controlnet_conditioning_channels=(8,)),
            sr=SRConfig(channels=16, blocks=2, train_patch=16, tile=32, tile_overlap=8),
            train=TrainConfig(steps=300, batch_size=2, lr=1e-3, checkpoint_every=100, validate_every=100),
        )
    if name in ("cpu", "cpu-wide"):  # the same networks; cpu-wide sees the whole chest (`config.data_preset`)
        return ModelPreset(
            name=name,
            data=data_preset(name),
            coarse=CoarseConfig(encoder_channels=(16, 32), lifted_channels=8, fusion_channels=16,
                                unet_channels=(16, 32, 64), sample_steps=20),
            prior=PriorConfig(channels=(16, 32, 64), sample_steps=20, controlnet_conditioning_channels=(16,)),
            sr=SRConfig(channels=32, blocks=4, train_patch=24, tile=64, tile_overlap=12),
            train=TrainConfig(steps=4000, batch_size=2, lr=5e-4, checkpoint_every=500, validate_every=500),
        )
    if name == "paper":
        return ModelPreset(
            name="paper",
            data=data_preset("paper"),
            coarse=CoarseConfig(encoder_channels=(32, 64, 128), lifted_channels=16, fusion_channels=32,
                                unet_channels=(64, 128, 256, 256), unet_res_blocks=2,
                                unet_attention=(False, False, False, True), sample_steps=20),
            prior=PriorConfig(channels=(64, 128, 256, 256), res_blocks=2, attention=(False, False, False, True),
                              num_head_channels=32, sample_steps=50, controlnet_conditioning_channels=(32,)),
            sr=SRConfig(channels=64, blocks=8, train_patch=48, tile=96, tile_overlap=20),
            train=TrainConfig(steps=200_000, batch_size=2, lr=1e-4, checkpoint_every=5000, validate_every=5000),
        )
    raise ValueError(f"unknown preset {name!r}; choose {', '.join(PRESET_NAMES)}")


def load_preset(name_or_file: str) -> ModelPreset:
    """A preset name, or a JSON file (a full preset dict, or {"base": name, ...overrides})."""
    if name_or_file in PRESET_NAMES:
        return model_preset(name_or_file)
    path = Path(name_or_file)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such preset or config file (presets: {', '.join(PRESET_NAMES)})")
    d = json.loads(path.read_text())
    if "base" in d:
        base = model_preset(d.pop("base")).to_dict()
        for section, values in d.items():
            if isinstance(values, dict) and isinstance(base.get(section), dict):
                base[section].update(values)
            else:
                base[section] = values
        d = base
    return ModelPreset.from_dict(d)
