"""The sparse projector must be `drr.project` (same numbers) with an exact adjoint and a safe disk cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from axonct.config import ProjectionGeometry, VolumeGrid
from axonct.physics.drr import project
from axonct.physics.geometry import view_at_angle
from axonct.physics.sparse_projector import (
    SparseProjector,
    downsample_view_image,
    projector_key,
    resampled_view,
)

S, P = 24, 20  # small, but not a multiple of each other so index mix-ups show


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    grid = VolumeGrid(size=S, fov_mm=320.0)
    geom = ProjectionGeometry(detector_pixels=P)
    views = [view_at_angle(a, geom) for a in (0.0, 90.0, 35.0, 200.0)]
    return grid, views, SparseProjector.build(grid, views)


def _vol(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, S, S, S), generator=g) * 0.03


def test_forward_matches_drr_project(setup):
    grid, views, A = setup
    x = _vol()
    # an asymmetric object so a flipped axis or transposed plane cannot pass
    x[:, 2:7, 15:20, 3:9] += 0.05
    y = A.forward(x)
    assert y.shape == (2, len(views), P, P) and y.dtype == torch.float32
    for i, v in enumerate(views):
        ref = project(x, grid, v)
        assert ref.abs().max() > 1.0
        torch.testing.assert_close(y[:, i], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_dot_product_adjoint(setup):
    _, views, A = setup
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn((1, S, S, S), generator=g)
        r = torch.randn((1, len(views), P, P), generator=g)
        lhs = (A.forward(x).double() * r.double()).sum()
        rhs = (x.double() * A.adjoint(r).double()).sum()
        assert abs(float(lhs - rhs)) / float(abs(lhs) + abs(rhs)) < 1e-5
    # and exactly in float64
    A64 = A.to(dtype=torch.float64)
    x = torch.randn((1, S, S, S), generator=g, dtype=torch.float64)
    r = torch.randn((1, len(views), P, P), generator=g, dtype=torch.float64)
    lhs, rhs = (A64.forward(x) * r).sum(), (x * A64.adjoint(r)).sum()
    assert abs(float(lhs - rhs)) / float(abs(lhs)) < 1e-12


def test_adjoint_equals_autograd_vjp_of_drr_project(setup):
    grid, views, A = setup
    x = _vol(1, seed=3)[0].requires_grad_(True)
    r = torch.randn((len(views), P, P), generator=torch.Generator().manual_seed(4))
    loss = sum((project(x, grid, v) * r[i]).sum() for i, v in enumerate(views))
    (vjp,) = torch.autograd.grad(loss, x)
    adj = A.adjoint(r)[0]
    torch.testing.assert_close(adj, vjp, rtol=1e-4, atol=1e-5 * float(vjp.abs().max()))


def test_forward_is_differentiable_with_the_adjoint_as_gradient(setup):
    _, views, A = setup
    x = _vol(2, seed=5).requires_grad_(True)
    r = torch.randn((2, len(views), P, P), generator=torch.Generator().manual_seed(6))
    (A.forward(x) * r).sum().backward()
    torch.testing.assert_close(x.grad, A.adjoint(r), rtol=1e-5, atol=1e-6)


def test_batch_shapes_and_normal(setup):
    _, views, A = setup
    x = _vol(3, seed=7)
    y = A.forward(x)
    assert A.forward(x[0]).shape == (1, len(views), P, P)
    torch.testing.assert_close(A.forward(x[:, None]), y)
    # batched columns give each volume's own projection
    for b in range(3):
        torch.testing.assert_close(A.forward(x[b]), y[b:b + 1], rtol=1e-5, atol=1e-5)
    back = A.adjoint(y)
    assert back.shape == (3, S, S, S)
    assert A.adjoint(y[0]).shape == (1, S, S, S)
    torch.testing.assert_close(A.normal(x), back)
    with pytest.raises(ValueError, match="grid"):
        A.forward(torch.zeros(S, S, S + 1))
    with pytest.raises(ValueError, match="residual"):
        A.adjoint(torch.zeros(1, len(views) + 1, P, P))
    with pytest.raises(ValueError):
        A.forward(torch.zeros(2, 2, S, S, S))


def test_cache_round_trip_and_corrupt_file_rebuilt(setup, tmp_path):
    grid, views, A = setup
    x = _vol(1, seed=8)
    first = SparseProjector.cached(grid, views, cache_dir=tmp_path)
    path = SparseProjector.cache_path(grid, views, tmp_path)
    assert path.exists() and list(tmp_path.iterdir()) == [path]  # no partial left behind
    second = SparseProjector.cached(grid, views, cache_dir=tmp_path)
    assert torch.equal(second.forward(x), first.forward(x))
    assert torch.equal(second.forward(x), A.forward(x))
    assert torch.equal(second.adjoint(A.forward(x)), A.adjoint(A.forward(x)))

    # a flipped byte in the middle of the data and a truncated file are both caught and rebuilt
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        third = SparseProjector.cached(grid, views, cache_dir=tmp_path)
    assert torch.equal(third.forward(x), A.forward(x))
    path.write_bytes(path.read_bytes()[: len(raw) // 3])
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        fourth = SparseProjector.cached(grid, views, cache_dir=tmp_path)
    assert torch.equal(fourth.forward(x), A.forward(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file is good again
        SparseProjector.cached(grid, views, cache_dir=tmp_path)


def test_cache_key_depends_on_geometry(setup, tmp_path, monkeypatch):
    grid, views, _ = setup
    k = projector_key(grid, views)
    assert k == projector_key(VolumeGrid(size=S, fov_mm=320.0), list(views))
    assert k != projector_key(VolumeGrid(size=S, fov_mm=300.0), views)
    assert k != projector_key(grid, views[:2])
    assert k != projector_key(grid, [views[0], views[1], view_at_angle(35.5, ProjectionGeometry(detector_pixels=P)),
                                     views[3]])
    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path / "env"))
    SparseProjector.cached(grid, views[:1])
    assert SparseProjector.cache_path(grid, views[:1]).parent == tmp_path / "env"
    assert SparseProjector.cache_path(grid, views[:1]).exists()


def test_resampled_view_and_area_downsampling():
    grid = VolumeGrid(size=S, fov_mm=320.0)
    fine = view_at_angle(0.0, ProjectionGeometry(detector_pixels=2 * P))
    coarse = resampled_view(fine, P)
    assert coarse.pixels == P and coarse.pixel_spacing_mm == pytest.approx(2 * fine.pixel_spacing_mm)
    extent = lambda v: v.pixels * v.pixel_spacing_mm  # noqa: E731
    assert extent(coarse) == pytest.approx(extent(fine))
    np.testing.assert_allclose(coarse.pixel_centers().mean(axis=(0, 1)), fine.pixel_centers().mean(axis=(0, 1)),
                               atol=1e-9)
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(downsample_view_image(img, 2), [[2.5, 4.5], [10.5, 12.5]])
    t = torch.rand(3, 2, 2 * P, 2 * P)
    assert downsample_view_image(t, P).shape == (3, 2, P, P)
    # a smooth volume's fine DRR, area-averaged, is close to the coarse detector's DRR
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, S),) * 3, indexing="ij")
    vol = 0.02 * torch.exp(-(x**2 + y**2 + z**2) / 0.3)
    a = downsample_view_image(project(vol, grid, fine), P)
    b = project(vol, grid, coarse)
    assert float((a - b).abs().max()) < 0.03 * float(b.max())
    with pytest.raises(ValueError):
        downsample_view_image(np.zeros((4, 5)), 2)
