"""The cone-beam projector as a precomputed sparse matrix, with its exact adjoint.

Data-consistency steps at sampling time run many gradient / conjugate-gradient iterations on
``||A x - y||^2``; `drr.project` plus autograd costs a `grid_sample` and its backward per call.
Here the same Joseph's-method sampling (per-plane bilinear weights with zero padding, times the
per-ray path length per plane) is written once into a CSR matrix ``A`` (rows: views x P x P
detector pixels, columns: the S^3 voxels in ``[z, y, x]`` order) and its transpose, so ``A x`` and
``A^T r`` are single sparse mat-mats, and ``A^T`` is the exact adjoint of ``A`` by construction.

Building takes a second or so at 64^3; `SparseProjector.cached` keeps the matrix on disk keyed by a
hash of the grid, every view's geometry and the format version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from axonct.atomic import atomic_path
from axonct.config import VolumeGrid
from axonct.physics.drr import _plane_sampling, _view_key
from axonct.physics.geometry import ViewGeometry

FORMAT_VERSION = 1  # bump when the matrix layout or the sampling changes: old cache files stop matching


def _key_payload(grid: VolumeGrid, views: Sequence[ViewGeometry]) -> dict:
    # Only what changes the matrix (HU window does not); repr() of floats is exact.
    return {
        "format": FORMAT_VERSION,
        "grid": [int(grid.size), repr(float(grid.fov_mm))],
        "views": [[repr(x) if isinstance(x, float) else x for x in _flat(_view_key(v))] for v in views],
    }


def _flat(t) -> list:
    out = []
    for x in t:
        out.extend(_flat(x) if isinstance(x, tuple) else [x])
    return out


def projector_key(grid: VolumeGrid, views: Sequence[ViewGeometry]) -> str:
    """Hex key of the matrix that (grid, views) produce; the cache file name."""
    payload = json.dumps(_key_payload(grid, views), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    env = os.environ.get("AXON_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "axon" / "projectors"


def _view_triplets(grid: VolumeGrid, view: ViewGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row-in-view, column, value) of one view's block, replicating `drr.project` exactly.

    `grid_sample(align_corners=False, padding_mode="zeros")` maps a normalised coordinate g to the
    pixel coordinate ((g + 1) * W - 1) / 2 and takes the four neighbours with bilinear weights,
    dropping those outside the plane. Plane images are laid out (others[1], others[0]).
    """
    s = int(grid.size)
    axis, sample_grid, path = _plane_sampling(_view_key(view), (s, float(grid.fov_mm)))
    others = [a for a in (0, 1, 2) if a != axis]
    g = sample_grid.astype(np.float64)  # (S, P, P, 2), float32 values as grid_sample sees them
    ix = ((g[..., 0] + 1.0) * s - 1.0) / 2.0  # along others[0] (plane width)
    iy = ((g[..., 1] + 1.0) * s - 1.0) / 2.0  # along others[1] (plane height)
    x0 = np.floor(ix)
    y0 = np.floor(iy)
    fx = ix - x0
    fy = iy - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    p = path.shape[0]
    plane = np.broadcast_to(np.arange(s, dtype=np.int64)[:, None, None], ix.shape)
    pixel = np.broadcast_to(np.arange(p * p, dtype=np.int64).reshape(1, p, p), ix.shape)
    path64 = path.astype(np.float64)[None]
    stride = {2: s * s, 1: s, 0: 1}  # flattened [z, y, x]: coordinate along axis a times stride[a]
    rows, cols, vals = [], [], []
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xc = x0 + dx
        yc = y0 + dy
        w = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy) * path64
        ok = (xc >= 0) & (xc < s) & (yc >= 0) & (yc < s) & (w != 0)
        col = plane[ok] * stride[axis] + xc[ok] * stride[others[0]] + yc[ok] * stride[others[1]]
        rows.append(pixel[ok])
        cols.append(col)
        vals.append(w[ok])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _torch_csr(m: sp.csr_matrix, dtype: torch.dtype) -> torch.Tensor:
    """torch CSR with int32 indices when they fit (about 2x faster mat-vec on CPU than int64)."""
    index = np.int32 if max(m.nnz, *m.shape) < 2**31 - 1 else np.int64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta" / invariant-check notices
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(index)),
            torch.from_numpy(m.indices.astype(index)),
            torch.from_numpy(m.data).to(dtype),
            size=m.shape,
            check_invariants=False,
        )


def _matmul(a: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Sparse (M, N) times dense (N, B); a single column goes through mv, several times faster."""
    if cols.shape[1] == 1:
        return torch.mv(a, cols[:, 0])[:, None]
    return a @ cols


def _checksum(*arrays: np.ndarray) -> int:
    c = 0
    for a in arrays:
        c = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), c)
    return c


class _Apply(torch.autograd.Function):
    """y = M x with gradient M^T g, so `forward` can sit inside an autograd loss."""

    @staticmethod
    def forward(ctx, m, mt, cols):
        ctx.mt = mt
        return _matmul(m, cols)

    @staticmethod
    def backward(ctx, grad):
        return None, None, _matmul(ctx.mt, grad.contiguous())


class SparseProjector:
    """``A`` and ``A^T`` of the Joseph's cone-beam projector for one grid and a list of views."""

    def __init__(self, grid: VolumeGrid, views: Sequence[ViewGeometry], matrix: sp.csr_matrix,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.grid = dataclasses.replace(grid)
        self.views = list(views)
        if not self.views:
            raise ValueError("a projector needs at least one view")
        pix = {int(v.pixels) for v in self.views}
        if len(pix) != 1:
            raise ValueError(f"all views must have the same detector size, got {sorted(pix)}")
        self.pixels = pix.pop()
        n_rows = len(self.views) * self.pixels**2
        if matrix.shape != (n_rows, grid.size**3):
            raise ValueError(f"matrix shape {matrix.shape} does not fit {len(self.views)} views of "
                             f"{self.pixels}^2 and a {grid.size}^3 grid")
        self._scipy = matrix
        self.dtype = dtype
        self.device = torch.device(device)
        self.A = _torch_csr(matrix, dtype).to(self.device)
        self.AT = _torch_csr(matrix.T.tocsr(), dtype).to(self.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, grid: VolumeGrid, views: Sequence[ViewGeometry]) -> "SparseProjector":
        """Assemble the matrix from the same per-plane sampling as `drr.project`."""
        return cls(grid, views, cls._assemble(grid, views))

    @staticmethod
    def _assemble(grid: VolumeGrid, views: Sequence[ViewGeometry]) -> sp.csr_matrix:
        views = list(views)
        if not views:
            raise ValueError("a projector needs at least one view")
        p = int(views[0].pixels)
        rows, cols, vals = [], [], []
        for i, view in enumerate(views):
            if int(view.pixels) != p:
                raise ValueError(f"all views must have the same detector size ({view.pixels} != {p})")
            r, c, v = _view_triplets(grid, view)
            rows.append(r + i * p * p)
            cols.append(c)
            vals.append(v)
        coo = sp.coo_matrix(
            (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(views) * p * p, grid.size**3),
        )
        m = coo.tocsr()
        m.sum_duplicates()
        m.sort_indices()
        return m

    @classmethod
    def cached(cls, grid: VolumeGrid, views: Sequence[ViewGeometry],
               cache_dir: str | Path | None = None) -> "SparseProjector":
        """Load the matrix from the disk cache, or build and store it (a bad file is rebuilt)."""
        views = list(views)
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = projector_key(grid, views)
        path = cls.cache_path(grid, views, folder)
        if path.exists():
            try:
                return cls(grid, views, _load_matrix(path, key))
            except Exception as exc:  # truncated, bit-flipped, other format, wrong key
                warnings.warn(f"projector cache {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it",
                              RuntimeWarning, stacklevel=2)
        matrix = cls._assemble(grid, views)
        try:
            _save_matrix(path, key, matrix)
        except OSError as exc:  # a read-only cache must not stop a reconstruction
            warnings.warn(f"could not write projector cache {path}: {exc}", RuntimeWarning, stacklevel=2)
        return cls(grid, views, matrix)

    @staticmethod
    def cache_path(grid: VolumeGrid, views: Sequence[ViewGeometry], cache_dir: str | Path | None = None) -> Path:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return folder / f"projector-v{FORMAT_VERSION}-{grid.size}-{projector_key(grid, list(views))}.npz"

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SparseProjector":
        """A copy on another device / in another dtype (float64 for exact checks)."""
        return SparseProjector(self.grid, self.views, self._scipy, dtype or self.dtype, device or self.device)

    # ------------------------------------------------------------------ operators
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._scipy.shape)

    @property
    def nnz(self) -> int:
        return int(self._scipy.nnz)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by A and A^T in torch (values + indices)."""
        total = 0
        for m in (self.A, self.AT):
            total += m.values().element_size() * m.values().numel()
            total += m.col_indices().element_size() * m.col_indices().numel()
            total += m.crow_indices().element_size() * m.crow_indices().numel()
        return total

    def _volume_batch(self, x: torch.Tensor) -> torch.Tensor:
        s = self.grid.size
        if x.dim() == 3:
            x = x[None]
        elif x.dim() == 5:
            if x.shape[1] != 1:
                raise ValueError(f"5-D volumes must be (B, 1, S, S, S), got {tuple(x.shape)}")
            x = x[:, 0]
        if x.dim() != 4 or tuple(x.shape[1:]) != (s, s, s):
            raise ValueError(f"volume shape {tuple(x.shape)} does not match the {s}^3 grid")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Line integrals: x (S,S,S), (B,S,S,S) or (B,1,S,S,S) -> (B, V, P, P) (differentiable in x)."""
        x = self._volume_batch(x)
        b = x.shape[0]
        cols = x.reshape(b, -1).to(device=self.device, dtype=self.dtype).t().contiguous()
        out = _Apply.apply(self.A, self.AT, cols) if cols.requires_grad else _matmul(self.A, cols)  # (V*P*P, B)
        return out.t().reshape(b, len(self.views), self.pixels, self.pixels)

    __call__ = forward

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """Back-projection A^T r: r (V,P,P) or (B,V,P,P) -> (B, S, S, S)."""
        if r.dim() == 3:
            r = r[None]
        shape = (len(self.views), self.pixels, self.pixels)
        if r.dim() != 4 or tuple(r.shape[1:]) != shape:
            raise ValueError(f"residual shape {tuple(r.shape)} does not match (B, {', '.join(map(str, shape))})")
        b = r.shape[0]
        cols = r.reshape(b, -1).to(device=self.device, dtype=self.dtype).t().contiguous()
        out = _Apply.apply(self.AT, self.A, cols) if cols.requires_grad else _matmul(self.AT, cols)
        s = self.grid.size
        return out.t().reshape(b, s, s, s)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^T A x, the Gram operator of the least-squares consistency term, (B, S, S, S)."""
        return self.adjoint(self.forward(x))


def _save_matrix(path: Path, key: str, m: sp.csr_matrix) -> None:
    indptr = m.indptr.astype(np.int64)
    indices = m.indices.astype(np.int32)
    data = m.data.astype(np.float32)
    meta = {"format": FORMAT_VERSION, "key": key, "shape": list(m.shape), "nnz": int(m.nnz),
            "crc32": _checksum(indptr, indices, data)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, indptr=indptr, indices=indices, data=data, meta=np.array(json.dumps(meta)))


def _load_matrix(path: Path, key: str) -> sp.csr_matrix:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        indptr, indices, data = z["indptr"], z["indices"], z["data"]
    if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
        raise ValueError(f"cache holds format {meta.get('format')} key {meta.get('key')}, expected {FORMAT_VERSION} {key}")
    rows, cols = meta["shape"]
    nnz = meta["nnz"]
    if indptr.shape != (rows + 1,) or indices.shape != (nnz,) or data.shape != (nnz,) or indptr[-1] != nnz:
        raise ValueError("array sizes do not match the stored shape")
    if _checksum(indptr, indices, data) != meta["crc32"]:
        raise ValueError("checksum mismatch")
    return sp.csr_matrix((data, indices, indptr), shape=(rows, cols))


# ---------------------------------------------------------------------- coarser detector
def resampled_view(view: ViewGeometry, pixels: int) -> ViewGeometry:
    """The same detector (extent, pose) read out with `pixels` per side: larger pixel spacing."""
    pixels = int(pixels)
    if pixels < 1:
        raise ValueError(f"pixels must be positive, not {pixels}")
    spacing = float(view.pixel_spacing_mm) * int(view.pixels) / pixels
    return dataclasses.replace(view, pixels=pixels, pixel_spacing_mm=spacing)


def downsample_view_image(img, pixels: int):
    """Area-average a (..., P, P) image (numpy or torch) to (..., pixels, pixels), for `resampled_view`.

    Exact box averaging when P is a multiple of `pixels` (the pixel footprints of the coarse
    detector tile the fine one), otherwise torch's adaptive average pooling.
    """
    is_np = isinstance(img, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(img)) if is_np else img
    if t.dim() < 2 or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"expected square (..., P, P) images, got {tuple(t.shape)}")
    lead = t.shape[:-2]
    flat = t.reshape(-1, 1, t.shape[-2], t.shape[-1])
    work = flat if flat.is_floating_point() else flat.float()
    out = F.adaptive_avg_pool2d(work, int(pixels)).reshape(*lead, int(pixels), int(pixels))
    return out.numpy() if is_np else out
