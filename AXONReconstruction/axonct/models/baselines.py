"""Baselines measured in the same harness as AXON.

`X2CTStyleCNN`: a single forward pass from the views to the CT, as X2CT-GAN does (without its
adversarial loss): the same view encoders and geometric back-projection as Stage I, then a 3D UNet
trained with L1. Comparing it with Stage I isolates what the Brownian bridge adds. The mean-CT atlas
baseline needs no network (`evaluation.evaluate_cache` averages the training cubes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from axonct.models.coarse import VIEW_ORDER, BackProjectionLift, ViewEncoder2d
from axonct.config import DataConfig, VolumeGrid
from axonct.physics.geometry import view_geometry
from axonct.presets import CoarseConfig


class X2CTStyleCNN(nn.Module):
    def __init__(self, cfg: CoarseConfig, data: DataConfig, grid: VolumeGrid, final_size: int):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.cfg, self.grid, self.final_size = cfg, grid, final_size
        self.encoders = nn.ModuleList([ViewEncoder2d(cfg.encoder_channels, cfg.lifted_channels) for _ in VIEW_ORDER])
        self.lifts = nn.ModuleList([BackProjectionLift(grid, view_geometry(v, data.geometry)) for v in VIEW_ORDER])
        c = int(cfg.fusion_channels)
        self.unet = BasicUNet(spatial_dims=3, in_channels=2 * (cfg.lifted_channels + 1) + 2, out_channels=1,
                              features=(c, c, 2 * c, 4 * c, 4 * c, c), norm=("group", {"num_groups": 4}))

    def forward(self, views: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        """Views [B,2,P,P] + mask [B,2] -> CT [B,1,N,N,N] in [-1, 1] at the diffusion grid."""
        b = views.shape[0]
        mask = view_mask.to(device=views.device, dtype=torch.float32)
        parts = []
        for i, (enc, lift) in enumerate(zip(self.encoders, self.lifts)):
            m = mask[:, i]
            parts += [lift(enc(views[:, i:i + 1] * m.view(b, 1, 1, 1))) * m.view(b, 1, 1, 1, 1),
                      lift.depth(b, views.device)]
        n = self.grid.size
        x = torch.cat(parts + [mask.view(b, 2, 1, 1, 1).expand(b, 2, n, n, n)], dim=1)
        return torch.tanh(self.unet(x)).float()

    def training_loss(self, x0, views, view_mask, generator):
        b = x0.shape[0]
        drop = torch.rand(b, generator=generator).to(x0.device) < self.cfg.view_dropout
        mask = view_mask.to(x0.device, torch.float32).clone()
        mask[:, 1] = mask[:, 1] * (~drop).float()
        loss = (self(views, mask) - x0.float()).abs().mean()
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def predict_final(self, views: np.ndarray, view_mask: np.ndarray) -> np.ndarray:
        """Unit volume on the final grid (trilinear from the network's grid), for evaluation."""
        device = next(self.parameters()).device
        x = self(torch.from_numpy(views)[None].to(device), torch.from_numpy(view_mask)[None].to(device))
        x = F.interpolate((x + 1) / 2, size=(self.final_size,) * 3, mode="trilinear", align_corners=False)
        return x.clamp(0, 1)[0, 0].cpu().numpy()
