"""Stage III (SR-Net): learned super-resolution of the Stage II volume from N^3 to (factor*N)^3.

Every resampling step is a learned transposed convolution ("without naive interpolation"). A
transposed-convolution skip path from the input is initialised to linear interpolation and the
residual branch's last conv to zero, so an untrained net already outputs a sensible upsampling and
training only has to learn the detail. Inference runs tile by tile with smooth blending so a 256^3
output fits in memory.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from axonct.presets import SRConfig


def _check_factor(factor: int) -> int:
    factor = int(factor)
    if factor < 2 or factor & (factor - 1):
        raise ValueError(f"SR factor must be a power of 2 (>= 2), got {factor}")
    return factor


def _linear_kernel_1d() -> torch.Tensor:
    """Taps of a stride-2, kernel-4 transposed conv that give linear interpolation at half-voxel
    offsets (even outputs 3/4 x[i] + 1/4 x[i-1], odd 3/4 x[i] + 1/4 x[i+1])."""
    return torch.tensor([0.25, 0.75, 0.75, 0.25])


class LinearInitUp(nn.Module):
    """Learned x2 transposed conv (1 -> 1 channel), initialised to separable linear interpolation.

    The input is edge-replicated by one voxel and the output cropped by two, so borders are not
    darkened by the transposed conv's implicit zeros; at init this equals trilinear upsampling with
    half-voxel (align_corners=False) sampling."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose3d(1, 1, kernel_size=4, stride=2, padding=1)
        k = _linear_kernel_1d()
        with torch.no_grad():
            self.up.weight.copy_(torch.einsum("i,j,k->ijk", k, k, k)[None, None])
            self.up.bias.zero_()

    def forward(self, x):
        y = self.up(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"))
        return y[..., 2:-2, 2:-2, 2:-2]


class ResBlock(nn.Module):
    """Norm-free conv residual block (EDSR-style: normalisation hurts intensity fidelity in SR)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv3d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv3d(ch, ch, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class SRNet(nn.Module):
    """Features at N^3, ConvTranspose3d upsampling (x2 per stage), refinement at factor*N, plus a learned
    linear-initialised transposed-conv skip from the input. Output [B, 1, factor*N, ...]."""

    def __init__(self, cfg: SRConfig):
        super().__init__()
        self.cfg = cfg
        self.factor = _check_factor(cfg.factor)
        ch = int(cfg.channels)
        stages = self.factor.bit_length() - 1
        self.head = nn.Conv3d(1, ch, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(ch) for _ in range(cfg.blocks)])
        self.body_tail = nn.Conv3d(ch, ch, 3, padding=1)
        ups = []
        for _ in range(stages):
            ups += [nn.ConvTranspose3d(ch, ch, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        self.upsample = nn.Sequential(*ups)
        self.refine = nn.Sequential(
            nn.Conv3d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2, inplace=True), nn.Conv3d(ch, 1, 3, padding=1)
        )
        with torch.no_grad():  # residual branch starts silent: output == skip path at init
            self.refine[-1].weight.zero_()
            self.refine[-1].bias.zero_()
        self.skip = nn.Sequential(*[LinearInitUp() for _ in range(stages)])

    def forward(self, x):
        f = self.head(x)
        f = f + self.body_tail(self.body(f))
        return self.skip(x) + self.refine(self.upsample(f))

    def training_loss(self, hr_patch: torch.Tensor, lr_patch: torch.Tensor):
        """L1 between the upsampled LR patch and the HR patch. Returns (loss, logs)."""
        loss = F.l1_loss(self(lr_patch).float(), hr_patch.float())
        return loss, {"loss": float(loss.detach())}


def sr_training_pair(hr_volume: torch.Tensor, patch: int, generator: torch.Generator, factor: int = 2):
    """Random aligned (hr_patch, lr_patch) pair per batch item: an HR cube of side factor*patch and its
    factor-times average-pooled LR version (the blur/aliasing a low-res diffusion output shows).

    hr_volume: [B, 1, D, H, W] with every side >= factor*patch. Offsets come from ``generator``."""
    factor = _check_factor(factor)
    if hr_volume.ndim != 5:
        raise ValueError(f"hr_volume must be [B, 1, D, H, W], got shape {tuple(hr_volume.shape)}")
    side = factor * int(patch)
    spatial = hr_volume.shape[2:]
    if any(s < side for s in spatial):
        raise ValueError(f"volume {tuple(spatial)} is smaller than the HR patch side {side}")
    crops = []
    for b in range(hr_volume.shape[0]):
        o = [int(torch.randint(0, s - side + 1, (1,), generator=generator, device=generator.device)) for s in spatial]
        crops.append(hr_volume[b:b + 1, :, o[0]:o[0] + side, o[1]:o[1] + side, o[2]:o[2] + side])
    hr = torch.cat(crops, 0)
    lr = F.avg_pool3d(hr, kernel_size=factor, stride=factor)
    return hr, lr


def _tile_starts(n: int, tile: int, step: int) -> list[int]:
    """Tile origins covering [0, n): regular steps, the last tile flush with the end."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile + 1, step))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


def tile_count(model: SRNet, spatial: tuple[int, int, int], tile: Optional[int] = None,
               overlap: Optional[int] = None) -> int:
    """How many tiles (progress steps) `upsample_tiled` runs on an LR volume of shape ``spatial``."""
    tile = model.cfg.tile if tile is None else int(tile)
    overlap = model.cfg.tile_overlap if overlap is None else int(overlap)
    count = 1
    for n in spatial:
        count *= len(_tile_starts(int(n), tile, tile - overlap))
    return count


def _window(length: int, overlap: int, lo_edge: bool, hi_edge: bool, dtype, device) -> torch.Tensor:
    """1-D blending weight for one tile side (HR voxels). At borders shared with a neighbour the weight
    is 0 over the outer quarter of the overlap (voxels most hurt by zero padding), then ramps linearly
    to 1 at the overlap's inner end; the two neighbours' weights sum to 1 across the overlap. Flat at
    the volume's own borders, where no other tile exists."""
    d = torch.arange(length, dtype=dtype, device=device) + 0.5
    w = torch.ones(length, dtype=dtype, device=device)
    if overlap > 0:
        m = overlap // 4
        ramp = lambda dist: ((dist - m) / max(overlap - 2 * m, 1)).clamp(0.0, 1.0)
        if not lo_edge:
            w = torch.minimum(w, ramp(d))
        if not hi_edge:
            w = torch.minimum(w, ramp(length - d))
    return w


@torch.no_grad()
def upsample_tiled(model: SRNet, x: torch.Tensor, tile: Optional[int] = None, overlap: Optional[int] = None,
                   progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Run ``model`` on overlapping LR tiles of side ``tile`` (neighbours share ``overlap`` voxels),
    one tile at a time, and blend the HR outputs with separable linear ramps across each overlap.

    Works for any N (tiles are flush with the far border); memory is one tile's activations plus the
    output and weight-sum volumes. The result matches full-volume inference up to the convs' zero
    padding near tile borders, which the ramps down-weight; use an overlap of at least the net's
    receptive radius (about 2*blocks + 4 LR voxels) for close agreement. tile/overlap default to the
    model's SRConfig (tile, tile_overlap); x must be on the model's device."""
    tile = model.cfg.tile if tile is None else int(tile)
    overlap = model.cfg.tile_overlap if overlap is None else int(overlap)
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    f = model.factor
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    starts = [_tile_starts(n, tile, tile - overlap) for n in spatial]
    out = torch.zeros((b, c, *[f * n for n in spatial]), dtype=x.dtype, device=x.device)
    wsum = torch.zeros((1, 1, *[f * n for n in spatial]), dtype=x.dtype, device=x.device)
    total = len(starts[0]) * len(starts[1]) * len(starts[2])
    k = 0
    for z in starts[0]:
        for y in starts[1]:
            for xx in starts[2]:
                o = (z, y, xx)
                size = [min(tile, n) for n in spatial]
                pred = model(x[:, :, z:z + size[0], y:y + size[1], xx:xx + size[2]]).to(x.dtype)
                ws = [
                    _window(f * size[a], f * overlap, o[a] == 0, o[a] + size[a] >= spatial[a], x.dtype, x.device)
                    for a in range(3)
                ]
                w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
                sl = (slice(None), slice(None), *[slice(f * o[a], f * (o[a] + size[a])) for a in range(3)])
                out[sl] += pred * w
                wsum[sl] += w
                k += 1
                if progress is not None:
                    progress(k - 1, total)
    return out / wsum
