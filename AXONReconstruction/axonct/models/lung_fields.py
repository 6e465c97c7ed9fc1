"""Lung fields in radiographs: the exact reference from a 3D lung mask, and a small 2D network.

Two things live here:

* :func:`project_lung_fields`, the *definition* of a lung field in AXON: project the 3D lung mask
  (a volume of ones inside the lungs) with the same cone-beam projector that renders the DRRs, which
  gives, per detector pixel, the length (mm) of the ray's path inside the lungs; the pixel is lung
  field where that length reaches ``min_thickness_mm``. The reference therefore includes lung behind
  the heart, the spine and the diaphragm domes (what the 3D reconstruction has to put there), not
  only the radiologist's "clear" lung outline.
* :class:`LungFieldNet`, a compact 2D UNet that predicts that union of both lungs' fields from one
  radiograph, and :class:`LungFieldSegmenter`, which loads the trained weights (``lung_fields.safetensors``
  plus its card ``lung_fields.json``) and runs it on views of any size. The network rank-equalises
  its input itself (:func:`~axonct.transforms.grey_values.equalize_views`), so callers pass the
  plain :func:`~axonct.transforms.window.to_model_view` output of a real radiograph or a DRR.

The weights are trained by :mod:`axonct.training.lung_fields` on simulated radiographs of the one
labelled sample CT and synthetic chests derived from it only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from axonct.config import DataConfig
from axonct.errors import AxonInputError
from axonct.atomic import sha256_file
from axonct.physics.drr import render_views
from axonct.transforms.grey_values import equalize_views

WEIGHTS_FILE = "lung_fields.safetensors"
CARD_FILE = "lung_fields.json"
CARD_KIND = "lung_fields"
FORMAT_VERSION = 1

DEFAULT_MIN_THICKNESS_MM = 10.0
"""Lung path length (mm) from which a detector pixel counts as lung field.

10 mm of aerated lung (about -850 HU) in place of soft tissue lowers the line integral by about
0.18 (mu_water 0.02/mm x 0.9), i.e. ~16 % more transmitted photons: clearly visible in a radiograph.
Below that the ray only grazes the lung (apex, costophrenic angles, the mediastinal edges, a partial
voxel or two at 2.5 mm voxels), the contrast sinks into scatter and noise, and the field's outline
would depend on the voxel size more than on anatomy. Much larger thresholds (30-50 mm) would cut away
the thin but real lung behind the heart and the diaphragm that the reconstruction must still place."""


# ----------------------------------------------------------------------------- exact reference


def lung_thickness_mm(lung_mask_3d, data_cfg: DataConfig,
                      views: Sequence[str] | None = None) -> np.ndarray:
    """Path length (mm) of each detector ray inside the lungs, float32 numpy [V, P, P].

    ``lung_mask_3d``: bool (or 0/1) [S, S, S] tensor or array on the model cube ``[z, y, x]`` of
    ``data_cfg`` (any S: the cube's field of view is kept, its voxel size follows S).
    """
    mask = torch.as_tensor(np.asarray(lung_mask_3d) if not torch.is_tensor(lung_mask_3d) else lung_mask_3d)
    if mask.dim() != 3 or len(set(mask.shape)) != 1:
        raise ValueError(f"lung mask must be a cube [S, S, S], got shape {tuple(mask.shape)}")
    grid = dataclasses.replace(data_cfg.grid, size=int(mask.shape[0]))
    ones = (mask != 0).to(torch.float32)
    with torch.no_grad():
        # the projector integrates the volume along each ray in millimetres: a volume of ones
        # inside the lungs gives the path length through them
        out = render_views(ones, grid, data_cfg.geometry, tuple(views or data_cfg.views))
    return out.to(device="cpu", dtype=torch.float32).numpy()


def project_lung_fields(lung_mask_3d, data_cfg: DataConfig,
                        min_thickness_mm: float = DEFAULT_MIN_THICKNESS_MM,
                        views: Sequence[str] | None = None) -> np.ndarray:
    """Reference lung fields, bool numpy [V, P, P]: where a ray crosses >= ``min_thickness_mm`` of lung.

    Same projector and geometry as the DRRs (:func:`axonct.physics.drr.render_views`), so the fields
    lie exactly on the lungs of a DRR rendered from the same cube. See
    :data:`DEFAULT_MIN_THICKNESS_MM` for the choice of threshold.
    """
    if not (isinstance(min_thickness_mm, (int, float)) and math.isfinite(min_thickness_mm)
            and min_thickness_mm > 0):
        raise ValueError(f"min_thickness_mm must be a positive number, not {min_thickness_mm!r}")
    return lung_thickness_mm(lung_mask_3d, data_cfg, views) >= float(min_thickness_mm)


# ----------------------------------------------------------------------------- network


@dataclass
class LungFieldConfig:
    """The 2D UNet: ``channels`` per resolution level (each level halves the image side)."""

    size: int = 128  # the square side the net runs at
    channels: tuple[int, ...] = (8, 16, 32, 64, 96)
    min_thickness_mm: float = DEFAULT_MIN_THICKNESS_MM  # the reference the net was trained on

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "LungFieldConfig":
        if not isinstance(d, dict):
            raise ValueError("the lung-field config must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown lung-field config keys {unknown}")
        cfg = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        ok_size = isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 16
        ok_ch = (isinstance(self.channels, tuple) and 1 <= len(self.channels) <= 7
                 and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in self.channels))
        if not ok_size or not ok_ch:
            raise ValueError(f"bad lung-field config: size {self.size!r}, channels {self.channels!r}")
        if self.size % (2 ** (len(self.channels) - 1)):
            raise ValueError(f"size {self.size} is not divisible by 2^{len(self.channels) - 1} (the UNet's depth)")
        t = self.min_thickness_mm
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0):
            raise ValueError(f"bad lung-field config: min_thickness_mm {t!r}")


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class LungFieldNet(nn.Module):
    """Compact 2D UNet: [B, 1, S, S] image in [0, 1] -> [B, 1, S, S] lung-field logits.

    The input is rank-equalised first (inside ``forward``), so any monotone grey-value processing of
    the radiograph (window, gamma, LUT, log or linear signal) gives the same prediction. The deepest
    level sees the whole image, which is what tells lungs (dark, inside the body) from the air
    around the patient (just as dark, outside it).
    """

    def __init__(self, cfg: LungFieldConfig | None = None):
        super().__init__()
        self.cfg = cfg or LungFieldConfig()
        self.cfg.validate()
        ch = self.cfg.channels
        self.down = nn.ModuleList()
        cin = 1
        for c in ch:
            self.down.append(_DoubleConv(cin, c))
            cin = c
        self.up = nn.ModuleList(_DoubleConv(ch[i + 1] + ch[i], ch[i]) for i in reversed(range(len(ch) - 1)))
        self.head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected [B, 1, S, S] images, got {tuple(x.shape)}")
        h = equalize_views(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return self.head(h)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- loading


def bundled_weights_dir() -> Path:
    """The weights folder shipped in the package (the same as `pipeline.loading.default_weights_dir`)."""
    return Path(__file__).resolve().parents[1] / "weights" / "cpu"


@dataclass(frozen=True)
class ViewChecks:
    """Thresholds of the input checks that read this network's output (`framing.looks_inverted`,
    `framing.looks_lateral`). They belong to one network: a card may carry its own under
    ``view_checks`` (chosen on training DRRs by `scripts/calibrate_view_checks.py`); the defaults were
    chosen for the network trained on LIDC-IDRI-0001's chests."""

    inverted_ratio: float = 1.5  # the negative's smaller-side lung share over the image's ...
    inverted_difference: float = 0.1  # ... and above it by this much
    lateral_symmetry_below: float = 0.5  # lung-field box's correlation with its mirror image
    lateral_centre_above: float = 1.05  # centre columns' lung share over the box's

    @classmethod
    def from_card(cls, info: dict, card: Path) -> "ViewChecks":
        values = info.get("view_checks", {})
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) - names or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values.values()):
            raise AxonInputError(card, f"field 'view_checks' must map some of {sorted(names)} to numbers")
        return cls(**{k: float(v) for k, v in values.items()})


def read_lung_field_card(weights_dir: str | Path) -> tuple[dict, LungFieldConfig]:
    """The checked card of a weights folder and the network config it describes."""
    weights, card = Path(weights_dir) / WEIGHTS_FILE, Path(weights_dir) / CARD_FILE
    for p in (card, weights):
        if not p.exists():
            raise AxonInputError(p, f"missing: the lung-field segmenter needs both {WEIGHTS_FILE} and {CARD_FILE}")
    try:
        info = json.loads(card.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AxonInputError(card, f"is not readable JSON ({exc}); copy it again or retrain") from None
    if not isinstance(info, dict) or info.get("kind") != CARD_KIND:
        raise AxonInputError(card, f"is not a lung-field weight card (kind {CARD_KIND!r} expected)")
    if info.get("format_version") != FORMAT_VERSION:
        raise AxonInputError(card, f"has format version {info.get('format_version')!r}, this AXON reads "
                                   f"version {FORMAT_VERSION}; retrain or use a matching AXON release")
    digest = info.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise AxonInputError(card, "field 'sha256' is missing or not a SHA-256 hex digest; the card is damaged")
    try:
        cfg = LungFieldConfig.from_dict(info.get("config"))
    except (TypeError, ValueError) as exc:
        raise AxonInputError(card, f"field 'config' is not a lung-field network config ({exc})") from None
    ViewChecks.from_card(info, card)  # refused here, at load, not at the first radiograph
    return info, cfg


class LungFieldSegmenter:
    """A trained :class:`LungFieldNet` in eval mode, for views of any square size."""

    def __init__(self, net: LungFieldNet, card: dict | None = None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.cfg = net.cfg
        self.card = card or {}
        self.view_checks = ViewChecks(**self.card.get("view_checks", {}))

    @classmethod
    def load(cls, weights_dir: str | Path, device: str | torch.device = "cpu") -> "LungFieldSegmenter":
        """Read ``lung_fields.safetensors`` + ``lung_fields.json``; checks the checksum, the config and
        every tensor's name and shape; any problem is an :class:`AxonInputError` naming the file."""
        from safetensors.torch import load_file

        info, cfg = read_lung_field_card(weights_dir)
        weights = Path(weights_dir) / WEIGHTS_FILE
        if sha256_file(weights) != info["sha256"].lower():
            raise AxonInputError(weights, "checksum does not match its card lung_fields.json: the file is "
                                          "truncated, corrupt or was modified; copy it again or retrain")
        try:
            state = load_file(str(weights), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
            raise AxonInputError(weights, f"cannot be read as safetensors ({exc})") from None
        net = LungFieldNet(cfg)
        own = net.state_dict()
        bad = sorted(set(own) ^ set(state)) or sorted(k for k in own if tuple(own[k].shape) != tuple(state[k].shape))
        if bad:
            raise AxonInputError(weights, f"does not fit the network of its card ({len(bad)} tensors missing, "
                                          f"unexpected or of another shape, e.g. {bad[0]}); retrain")
        net.load_state_dict(state, strict=True)
        return cls(net, info, device)

    @torch.no_grad()
    def probabilities(self, views, batch: int = 8) -> np.ndarray:
        """Lung-field probability per pixel, float32 with the input's shape.

        ``views``: [S, S] or [V, S, S] images in [0, 1] (bright = attenuating), e.g. from
        :func:`~axonct.transforms.window.to_model_view`; any S (resized to the net's size and
        the probabilities back). Non-square images must be squared with ``to_model_view`` first.
        """
        a = np.asarray(views, dtype=np.float32)
        if a.ndim not in (2, 3) or a.shape[-1] != a.shape[-2] or a.shape[-1] < 2:
            raise ValueError(f"expected square views [S, S] or [V, S, S], got shape {a.shape} "
                             "(square a radiograph with axonct.transforms.window.to_model_view)")
        if not np.all(np.isfinite(a)):
            raise ValueError("views contain NaN or infinite values")
        squeeze = a.ndim == 2
        x = torch.from_numpy(np.ascontiguousarray(a if not squeeze else a[None]))[:, None]
        side, size = x.shape[-1], self.cfg.size
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=side > size, align_corners=False)
        outs = []
        for start in range(0, x.shape[0], batch):
            logits = self.net(x[start:start + batch].to(self.device))
            outs.append(torch.sigmoid(logits.float()).cpu())
        p = torch.cat(outs)
        if side != size:
            p = F.interpolate(p, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
        p = p[:, 0].numpy().astype(np.float32)
        return p[0] if squeeze else p

    def masks(self, views, threshold: float = 0.5) -> np.ndarray:
        """Bool lung-field masks with the input's shape."""
        return self.probabilities(views) >= float(threshold)


def load_lung_field_segmenter(weights_dir: str | Path | None = None,
                              device: str | torch.device = "cpu") -> LungFieldSegmenter | None:
    """The segmenter of a weights folder (default: the bundled one), or None when the folder has no
    lung-field weights (either file missing). Damaged files raise :class:`AxonInputError`."""
    folder = Path(weights_dir) if weights_dir is not None else bundled_weights_dir()
    if not (folder / WEIGHTS_FILE).exists() or not (folder / CARD_FILE).exists():
        return None
    return LungFieldSegmenter.load(folder, device=device)
