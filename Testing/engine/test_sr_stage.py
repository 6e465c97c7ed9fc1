"""Stage III: transposed-convolution SR-Net, training pairs and tiled inference (tiny preset)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from axonct.models import sr as sr_stage
from axonct.presets import model_preset
from axonct.models.sr import SRNet, sr_training_pair, upsample_tiled


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**over):
    return dataclasses.replace(model_preset("tiny").sr, **over)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def smooth_volume(n, b=1, seed=0):
    """Random low-frequency field in [-1, 1] (a few cosines), as a stand-in for blurred anatomy."""
    g = gen(seed)
    ax = (torch.arange(n) + 0.5) / n
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    out = []
    for _ in range(b):
        v = torch.zeros(n, n, n)
        for _ in range(4):
            k = torch.rand(3, generator=g)
            ph = torch.rand(3, generator=g) * 6.28
            v += torch.cos(6.28 * k[0] * z + ph[0]) * torch.cos(6.28 * k[1] * y + ph[1]) * torch.cos(6.28 * k[2] * x + ph[2])
        out.append(v / 4)
    return torch.stack(out)[:, None].float()


def phantom(n, seed=0):
    """Piecewise-constant spheres/boxes in [-1, 1]: edges the SR net can learn to sharpen."""
    g = gen(seed)
    ax = torch.arange(n) + 0.5
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    v = torch.full((n, n, n), -1.0)
    for _ in range(6):
        c = torch.rand(3, generator=g) * n
        r = float(torch.rand(1, generator=g)) * n / 4 + n / 10
        val = float(torch.rand(1, generator=g)) * 2 - 1
        v[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r**2] = val
    return v[None, None]


def blurred(v, sigma=1.0):
    """Separable Gaussian blur (edge-replicated): a band-limited phantom, like CT at its own resolution."""
    k = torch.exp(-torch.arange(-3, 4.0) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    for d in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + d] = 7
        pad = [0] * 6
        pad[2 * (2 - d)] = pad[2 * (2 - d) + 1] = 3
        v = F.conv3d(F.pad(v, pad, mode="replicate"), k.view(shape))
    return v


def perturbed(model: SRNet) -> SRNet:
    """Make the residual branch active (it is silent at init) so tiling is tested on a non-trivial net."""
    with torch.no_grad():
        nn.init.normal_(model.refine[-1].weight, std=0.05)
        model.refine[-1].bias.fill_(0.01)
    return model


@pytest.mark.parametrize("n", [16, 24])
@pytest.mark.parametrize("b", [1, 2])
def test_output_shape(n, b):
    m = SRNet(cfg())
    out = m(torch.zeros(b, 1, n, n, n))
    assert out.shape == (b, 1, 2 * n, 2 * n, 2 * n) and out.dtype == torch.float32


def test_factor_four_and_invalid_factor():
    assert SRNet(cfg(factor=4))(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 1, 32, 32, 32)
    for f in (1, 3, 6):
        with pytest.raises(ValueError):
            SRNet(cfg(factor=f))


def test_no_interpolation_anywhere():
    m = SRNet(cfg(factor=4))
    assert not any(isinstance(mod, nn.Upsample) for mod in m.modules())
    assert sum(isinstance(mod, nn.ConvTranspose3d) for mod in m.modules()) == 4  # 2 feature + 2 skip
    src = inspect.getsource(sr_stage)
    assert "interpolate(" not in src and "Upsample" not in src and "grid_sample" not in src


def test_init_is_linear_upsampling():
    m = SRNet(cfg())
    x = smooth_volume(16, b=2)
    with torch.no_grad():
        y = m(x)
    # exactly trilinear (half-voxel / align_corners=False, edge-clamped) at init
    ref = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    assert (y - ref).abs().max() < 1e-5
    # and consistent with the input: its 2x average pool is the input within 0.03 on a smooth field
    assert (F.avg_pool3d(y, 2) - x).abs().max() < 0.03


def test_training_pair():
    hr = phantom(40)
    hr = torch.cat([hr, -hr])
    h, l = sr_training_pair(hr, 8, gen(1))
    assert h.shape == (2, 1, 16, 16, 16) and l.shape == (2, 1, 8, 8, 8)
    assert torch.allclose(F.avg_pool3d(h, 2), l)
    h2, l2 = sr_training_pair(hr, 8, gen(1))
    assert torch.equal(h, h2) and torch.equal(l, l2)
    h4, l4 = sr_training_pair(hr, 4, gen(1), factor=4)
    assert h4.shape == (2, 1, 16, 16, 16) and l4.shape == (2, 1, 4, 4, 4)
    with pytest.raises(ValueError):
        sr_training_pair(hr, 24, gen(1))


def test_tiled_matches_full():
    """N=24 with tile 16 / overlap 8 (24 is not a multiple of 16). Tolerance: max |diff| < 0.01 and
    mean |diff| < 5e-4 on a [-1, 1] volume; the residual comes only from the convs' zero padding at
    tile borders, which the blending window down-weights."""
    torch.manual_seed(0)
    m = perturbed(SRNet(cfg()))
    x = smooth_volume(24, b=2, seed=3)
    with torch.no_grad():
        full = m(x)
    ticks = []
    tiled = upsample_tiled(m, x, tile=16, overlap=8, progress=lambda i, n: ticks.append((i, n)))
    assert tiled.shape == full.shape
    diff = (tiled - full).abs()
    assert diff.max() < 0.01 and diff.mean() < 5e-4, (diff.max(), diff.mean())
    assert ticks == [(i, 8) for i in range(8)]  # 2 tiles per axis
    # a tile larger than the volume is just full inference
    assert torch.allclose(upsample_tiled(m, x, tile=32, overlap=4), full, atol=1e-6)
    with pytest.raises(ValueError):
        upsample_tiled(m, x, tile=8, overlap=8)


def test_training_improves_on_fixed_example():
    torch.manual_seed(0)
    m = SRNet(cfg())
    hr = blurred(phantom(24, seed=2))
    lr = F.avg_pool3d(hr, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss, logs = m.training_loss(hr, lr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.l1_loss(m(lr), hr).item()
    assert final < 0.85 * losses[0], (losses[0], final)  # about 0.034 -> 0.019 here
    assert losses[-1] < losses[0]
