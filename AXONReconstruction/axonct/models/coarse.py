"""Stage I ("CoarseDiff"): radiographs -> coarse CT on the diffusion grid with a Brownian bridge.

Pipeline: each view goes through its own small 2D encoder; the feature maps are back-projected
into the cube along the true cone-beam rays (`BackProjectionLift`, so a structure seen in both views
lands where the two rays cross); `FusionBlock` merges the lifted volumes into the bridge's start
volume y in [-1, 1]; a 3D MONAI `DiffusionModelUNet` (input [x_t, y]) runs the BBDM from y to x0.

The lateral view is optional: ``view_mask[:, 1] == 0`` zeroes its image and its lifted features, so
y does not depend on whatever the lateral channel holds. All randomness comes from explicit
``torch.Generator`` objects so a trainer can resume bit-exactly.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from axonct.models.brownian_bridge import BrownianBridgeScheduler, Guidance, Progress, randn_like_from
from axonct.config import DataConfig, VolumeGrid
from axonct.transforms.grey_values import equalize_views, match_views
from axonct.physics.geometry import ViewGeometry, view_geometry
from axonct.presets import CoarseConfig

VIEW_ORDER = ("frontal", "lateral")  # channel order of the `views` tensor


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` not above ``max_groups`` (GroupNorm needs an exact split)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _norm_act(channels: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: each sample's output must not depend on the rest of the batch.
    return nn.Sequential(nn.GroupNorm(_groups(channels), channels), nn.SiLU())


class ViewEncoder2d(nn.Module):
    """Small 2D U-shaped encoder: one radiograph [B,1,P,P] -> features [B,C,P,P].

    The down/up path gives each pixel context (a rib edge vs. lung field) before lifting; the output
    stays at the view's resolution so back-projection keeps the detector's detail.
    """

    def __init__(self, channels: tuple[int, ...], out_channels: int, in_channels: int = 1) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("encoder_channels must not be empty")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1), _norm_act(channels[0]))
        self.down = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.down.append(nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), _norm_act(c_out),
                nn.Conv2d(c_out, c_out, 3, padding=1), _norm_act(c_out),
            ))
        self.up = nn.ModuleList()
        for c_in, c_out in zip(channels[:0:-1], channels[-2::-1]):
            self.up.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.up_norm = nn.ModuleList([_norm_act(c) for c in channels[-2::-1]])
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.stem(image)
        skips = [h]
        for block in self.down:
            h = block(h)
            skips.append(h)
        skips.pop()
        for conv, norm in zip(self.up, self.up_norm):
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = norm(conv(h) + skip)
        return self.head(h)


class BackProjectionLift(nn.Module):
    """Back-projects a detector feature map into the cube along the view's cone-beam rays.

    Every voxel centre takes the (bilinearly interpolated) feature at its projection
    `ViewGeometry.project`, so the lift is constant along each ray. Coordinates are precomputed once
    (geometry is fixed) and cached per device; they are not part of the state dict.

    Pixel (row, col) fractional indices have pixel centres at integers 0..P-1, so the normalised
    grid_sample coordinate with ``align_corners=False`` is 2 (i + 0.5) / P - 1. That value does not
    depend on the feature map's resolution P' (same detector extent, P/P' larger pixels), so any P'
    works with the same cache. Voxels projecting outside the detector get zeros.
    """

    def __init__(self, grid: VolumeGrid, view: ViewGeometry) -> None:
        super().__init__()
        self.grid = grid
        self.view_name = view.name
        n = int(grid.size)
        centres = (np.arange(n) + 0.5) * grid.spacing_mm - grid.fov_mm / 2.0
        zz, yy, xx = np.meshgrid(centres, centres, centres, indexing="ij")
        points = np.stack([xx, yy, zz], axis=-1)  # (N, N, N, 3) in (x, y, z) mm, array order [z, y, x]
        rc = view.project(points)
        p = float(view.pixels)
        gx = 2.0 * (rc[..., 1] + 0.5) / p - 1.0  # grid_sample x -> column (last dim)
        gy = 2.0 * (rc[..., 0] + 0.5) / p - 1.0  # grid_sample y -> row
        coords = np.stack([gx, gy], axis=-1).reshape(1, n * n, n, 2)
        axis = view.detector_center - view.source
        axis = axis / np.linalg.norm(axis)
        # signed distance from the isocentre along the view axis (source -> detector), in half-FOVs
        depth = (points @ axis) / (grid.fov_mm / 2.0)
        self._coords_cpu = torch.from_numpy(coords.astype(np.float32))
        self._depth_cpu = torch.from_numpy(depth.astype(np.float32)).reshape(1, 1, n, n, n)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(torch.device(device))
        if key not in self._cache:
            self._cache[key] = (self._coords_cpu.to(device), self._depth_cpu.to(device))
        return self._cache[key]

    def depth(self, batch: int, device: torch.device) -> torch.Tensor:
        """Normalised depth along this view's axis, [B, 1, N, N, N] float32 (lets convs learn depth)."""
        return self._tables(device)[1].expand(batch, -1, -1, -1, -1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, C, P', P'] -> [B, C, N, N, N] float32 (sampling runs in float32, outside autocast)."""
        b, c = features.shape[:2]
        n = int(self.grid.size)
        coords = self._tables(features.device)[0].expand(b, -1, -1, -1)
        with torch.autocast(device_type=features.device.type, enabled=False):
            out = F.grid_sample(features.float(), coords, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        return out.reshape(b, c, n, n, n)


class FusionBlock(nn.Module):
    """Merges the lifted views into the bridge start volume y in [-1, 1].

    Input channels: [f_frontal * m_f, depth_f, f_lateral * m_l, depth_l, m_f, m_l] with the masks as
    constant channels, so one network serves the one- and two-view cases. A half-resolution branch
    widens the receptive field cheaply.
    """

    def __init__(self, lifted_channels: int, channels: int) -> None:
        super().__init__()
        in_ch = 2 * (lifted_channels + 1) + 2
        self.inp = nn.Sequential(nn.Conv3d(in_ch, channels, 1), _norm_act(channels))
        self.res = nn.Sequential(nn.Conv3d(channels, channels, 3, padding=1), _norm_act(channels),
                                 nn.Conv3d(channels, channels, 3, padding=1))
        self.res_norm = _norm_act(channels)
        self.down = nn.Sequential(nn.Conv3d(channels, channels, 3, stride=2, padding=1), _norm_act(channels),
                                  nn.Conv3d(channels, channels, 3, padding=1), _norm_act(channels))
        self.merge = nn.Sequential(nn.Conv3d(channels, channels, 3, padding=1), _norm_act(channels))
        self.out = nn.Conv3d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = self.res_norm(h + self.res(h))
        low = self.down(h)
        h = h + F.interpolate(low, size=h.shape[-3:], mode="trilinear", align_corners=False)
        h = self.merge(h)
        return torch.tanh(self.out(h))


def _unet_norm_groups(channels: tuple[int, ...]) -> int:
    """GroupNorm groups for the UNet: divides every level, <= 32, >= 2 channels per group at level 0."""
    return math.gcd(*channels, 32, max(1, channels[0] // 2))


def _unet_head_channels(channels: tuple[int, ...]) -> list[int]:
    return [min(32, c) if c % min(32, c) == 0 else c for c in channels]


def coarse_input_views(cfg: CoarseConfig, views: torch.Tensor) -> torch.Tensor:
    """Views [..., 2, P, P] brought into Stage I's input domain (`CoarseConfig.input_domain`).

    "matched" maps each view onto the training views' grey-value distribution (rank-equalised
    while the trainer has not measured one yet); applying it twice changes nothing, so callers
    may pass already matched views.
    """
    if cfg.input_domain == "matched":
        if not cfg.input_tables:
            return equalize_views(views)
        return match_views(views, torch.tensor(cfg.input_tables, dtype=torch.float32))
    if cfg.input_domain == "equalized":
        return equalize_views(views)
    return views


class CoarseStage(nn.Module):
    """Stage I model: view encoders + lifting + fusion (-> y) and the BBDM 3D UNet (y -> x0)."""

    def __init__(self, cfg: CoarseConfig, data: DataConfig, grid: VolumeGrid) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet  # heavy import, only when a model is built

        self.cfg = cfg
        self.grid = grid
        self.detector_pixels = int(data.geometry.detector_pixels)
        self.scheduler = BrownianBridgeScheduler(cfg.num_train_timesteps, cfg.m_min, cfg.m_max, cfg.variance_scale)
        self.encoders = nn.ModuleList(
            [ViewEncoder2d(cfg.encoder_channels, cfg.lifted_channels) for _ in VIEW_ORDER])
        self.lifts = nn.ModuleList(
            [BackProjectionLift(grid, view_geometry(v, data.geometry)) for v in VIEW_ORDER])
        self.fusion = FusionBlock(cfg.lifted_channels, cfg.fusion_channels)
        channels = tuple(int(c) for c in cfg.unet_channels)
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=2,
            out_channels=1,
            channels=channels,
            attention_levels=tuple(bool(a) for a in cfg.unet_attention),
            num_res_blocks=int(cfg.unet_res_blocks),
            num_head_channels=_unet_head_channels(channels),
            norm_num_groups=_unet_norm_groups(channels),
            use_flash_attention=True,  # torch's scaled-dot-product attention: same weights, fused kernels
        )

    # ------------------------------------------------------------------ conditioning
    def _check(self, views: torch.Tensor, view_mask: torch.Tensor) -> None:
        if views.dim() != 4 or views.shape[1] != len(VIEW_ORDER):
            raise ValueError(f"views must be [B, 2, P, P], got {tuple(views.shape)}")
        if tuple(view_mask.shape) != (views.shape[0], len(VIEW_ORDER)):
            raise ValueError(f"view_mask must be [B, 2], got {tuple(view_mask.shape)}")

    def input_views(self, views: torch.Tensor) -> torch.Tensor:
        return coarse_input_views(self.cfg, views)

    def encode(self, views: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        """Views [B,2,P,P] in [0,1] + mask [B,2] -> y [B,1,N,N,N] float32 in [-1,1]."""
        self._check(views, view_mask)
        views = self.input_views(views)  # any global contrast processing of the radiograph drops out
        b = views.shape[0]
        mask = view_mask.to(device=views.device, dtype=torch.float32)
        parts, depths = [], []
        for i, (enc, lift) in enumerate(zip(self.encoders, self.lifts)):
            m = mask[:, i]
            feat = enc(views[:, i:i + 1] * m.view(b, 1, 1, 1).to(views.dtype))
            parts.append(lift(feat) * m.view(b, 1, 1, 1, 1))
            depths.append(lift.depth(b, views.device))
        n = self.grid.size
        mask_ch = mask.view(b, 2, 1, 1, 1).expand(b, 2, n, n, n)
        x = torch.cat([parts[0], depths[0], parts[1], depths[1], mask_ch], dim=1)
        return self.fusion(x).float()

    def predict(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """UNet grad-objective prediction for [x_t, y] at timesteps t (LongTensor [B]), float32."""
        return self.unet(torch.cat([x_t, y.to(x_t.dtype)], dim=1), t).float()

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        x0: torch.Tensor,
        views: torch.Tensor,
        view_mask: torch.Tensor,
        generator: torch.Generator,
        view_dropout: Optional[float] = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 BBDM (grad objective) + y_loss_weight * L1(y, x0), with lateral view dropout.

        Random draws, in this fixed order and always made (so the generator advances the same amount
        every call): dropout uniforms [B], timesteps [B], noise like x0. ``view_dropout`` overrides
        cfg.view_dropout (e.g. 0 for validation losses). Gradients reach the encoders through y both
        via the y loss and via the bridge (x_t, target and the UNet input).
        """
        b = x0.shape[0]
        gen_device = generator.device
        p = self.cfg.view_dropout if view_dropout is None else float(view_dropout)
        drop = torch.rand(b, generator=generator, device=gen_device).to(x0.device) < p
        t = torch.randint(0, self.scheduler.num_train_timesteps, (b,), generator=generator,
                          device=gen_device).to(x0.device)
        x0 = x0.float()
        noise = randn_like_from(x0, generator)
        mask = view_mask.to(device=x0.device, dtype=torch.float32).clone()
        mask[:, 1] = mask[:, 1] * (~drop).float()
        y = self.encode(views, mask)
        x_t = self.scheduler.add_noise(x0, y, noise, t)
        target = self.scheduler.training_target(x0, y, noise, t)
        out = self.predict(x_t, y, t)
        loss_bbdm = (out - target).abs().mean()
        loss_y = (y - x0).abs().mean()
        loss = loss_bbdm + self.cfg.y_loss_weight * loss_y
        stats = {
            "loss": float(loss.detach()),
            "loss_bbdm": float(loss_bbdm.detach()),
            "loss_y": float(loss_y.detach()),
            "lateral_fraction": float(mask[:, 1].mean()),
        }
        return loss, stats

    # ------------------------------------------------------------------ inference
    def sample(
        self,
        views: torch.Tensor,
        view_mask: torch.Tensor,
        num_steps: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        guidance: Optional[Guidance] = None,
        progress: Optional[Progress] = None,
        eta: Optional[float] = None,
    ) -> torch.Tensor:
        """Coarse CT [B,1,N,N,N] in [-1,1]: BBDM from x_T = y in num_steps (default cfg.sample_steps).

        Network calls run under no_grad; ``guidance`` is called in the caller's grad mode (so it can
        use autograd on a leaf copy of x0_hat).
        """
        with torch.no_grad():
            y = self.encode(views, view_mask)

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.predict(x_t, y, t)

        return self.scheduler.sample(
            model_fn, y, int(num_steps or self.cfg.sample_steps), generator=generator,
            eta=self.cfg.eta if eta is None else float(eta), guidance=guidance, clip=True, progress=progress)
