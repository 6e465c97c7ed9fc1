"""Map a CT (any grid, any direction) onto the model cube and back again.

The models see a body-centred cube on an identity-direction LPS grid with intensities in [0, 1];
everything the models produce has to go back to HU on the user's own CT grid with the right
physical geometry. Both directions resample exactly once from the source to avoid stacked blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from axonct.config import VolumeGrid
from axonct.errors import AxonInputError

BODY_THRESHOLD_HU = -500.0
"""Between air/lung (below) and fat/soft tissue (above): the skin surface."""

MASK_WORK_SPACING_MM = 2.5
"""Resolution at which the body mask is computed: fine enough for the skin, cheap on 512² CTs."""

MASK_MORPH_RADIUS_MM = 2.5
"""Opening/dilation radius: removes structures thinner than ~5 mm (table shell, cables)."""

AIR_HU = -1024.0


def hu_to_unit(hu, grid: VolumeGrid):
    """HU -> [0, 1]: clip to the grid's HU window, then linear (works on numpy arrays and tensors)."""
    lo, hi = float(grid.hu_min), float(grid.hu_max)
    if np.isscalar(hu):
        return (min(max(float(hu), lo), hi) - lo) / (hi - lo)
    out = (hu.clip(lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32, copy=False) if isinstance(out, np.ndarray) else out


def unit_to_hu(u, grid: VolumeGrid):
    """[0, 1] -> HU: the exact inverse of ``hu_to_unit`` inside the window (values outside clip)."""
    lo, hi = float(grid.hu_min), float(grid.hu_max)
    if np.isscalar(u):
        return min(max(float(u), 0.0), 1.0) * (hi - lo) + lo
    out = u.clip(0.0, 1.0) * (hi - lo) + lo
    return out.astype(np.float32, copy=False) if isinstance(out, np.ndarray) else out


def _cube_origin(center_lps, grid: VolumeGrid) -> tuple[float, float, float]:
    half = (grid.size - 1) / 2.0 * grid.spacing_mm
    return tuple(float(c) - half for c in center_lps)


@dataclass
class ModelVolume:
    """A model cube: ``array`` [z, y, x] in [0, 1], centred at ``center_lps`` (mm, LPS)."""

    array: np.ndarray
    center_lps: tuple[float, float, float]
    grid: VolumeGrid

    def __post_init__(self):
        self.array = np.asarray(self.array, dtype=np.float32)
        n = self.grid.size
        if self.array.shape != (n, n, n):
            raise ValueError(f"ModelVolume array has shape {self.array.shape}, the grid needs {(n, n, n)}")
        self.center_lps = tuple(float(c) for c in self.center_lps)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(x, y, z) spacing like SimpleITK's GetSpacing; isotropic ``grid.spacing_mm``."""
        s = float(self.grid.spacing_mm)
        return (s, s, s)

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        """Centre of voxel [0, 0, 0]."""
        return _cube_origin(self.center_lps, self.grid)

    def to_hu_image(self) -> sitk.Image:
        image = sitk.GetImageFromArray(unit_to_hu(self.array, self.grid).astype(np.float32))
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_lps)
        image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        return image

    @classmethod
    def from_hu_image(cls, image: sitk.Image, grid: VolumeGrid) -> "ModelVolume":
        """Wrap an HU image that already sits on a cube of ``grid`` (no resampling)."""
        n, s = grid.size, grid.spacing_mm
        problems = []
        if tuple(image.GetSize()) != (n, n, n):
            problems.append(f"size {image.GetSize()} instead of {(n, n, n)}")
        if not np.allclose(image.GetSpacing(), (s, s, s), rtol=0, atol=1e-4):
            problems.append(f"spacing {image.GetSpacing()} instead of {s:g} mm")
        if not np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6):
            problems.append("a non-identity direction")
        if problems:
            raise AxonInputError(None, "image is not on the model grid: " + ", ".join(problems))
        center = tuple(o + (n - 1) / 2.0 * s for o in image.GetOrigin())
        array = hu_to_unit(sitk.GetArrayFromImage(image).astype(np.float32), grid)
        return cls(array=array, center_lps=center, grid=grid)


def body_mask(image: sitk.Image) -> sitk.Image:
    """Body mask (uint8) at a coarse working resolution (~2.5 mm), on a grid covering ``image``.

    Threshold at -500 HU, an opening of ~2.5 mm radius to cut thin bridges (table shell, cables,
    clothes folds), keep the largest connected component, fill holes (lungs, airways) per axial
    slice, then dilate by the same radius so the skin's partial-volume rim survives when the mask
    is applied. Sources coarser than ~5 mm skip the morphology: it would erase the chest wall.
    """
    factors = [max(1, int(round(MASK_WORK_SPACING_MM / s))) for s in image.GetSpacing()]
    small = sitk.BinShrink(image, factors) if any(f > 1 for f in factors) else image
    radius = [int(round(MASK_MORPH_RADIUS_MM / s)) for s in small.GetSpacing()]
    mask = sitk.BinaryThreshold(small, BODY_THRESHOLD_HU, 1e9, 1, 0)
    if any(radius):
        mask = sitk.BinaryMorphologicalOpening(mask, radius, sitk.sitkBall)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    mask = sitk.Cast(cc == 1, sitk.sitkUInt8)
    mask = _fill_holes_axial(mask)
    if any(radius):
        mask = sitk.BinaryDilate(mask, radius, sitk.sitkBall)
    return mask


def _fill_holes_axial(mask: sitk.Image) -> sitk.Image:
    """Fill holes slice by slice along the axis closest to superior.

    A 3D fill would leave the lungs out: they reach the volume's top face through the trachea.
    """
    d = np.array(mask.GetDirection()).reshape(3, 3)
    axis = 2 - int(np.argmax(np.abs(d[2, :])))  # numpy axis of the image axis most along +z
    a = sitk.GetArrayFromImage(mask)
    a = np.moveaxis(a, axis, 0)
    for k in range(a.shape[0]):
        if a[k].any():
            a[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(a[k])))
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(a, 0, axis)))
    out.CopyInformation(mask)
    return out


def _bbox_center_lps(mask: sitk.Image) -> tuple[float, float, float]:
    a = sitk.GetArrayViewFromImage(mask)
    idx = np.nonzero(a)
    if idx[0].size == 0:
        raise AxonInputError(None, f"no body found in the CT (no region above {BODY_THRESHOLD_HU:g} HU)")
    lo = [int(i.min()) for i in idx][::-1]  # -> (x, y, z) index order
    hi = [int(i.max()) for i in idx][::-1]
    corners = np.array(
        [mask.TransformIndexToPhysicalPoint((x, y, z)) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    return tuple(float(v) for v in (corners.min(axis=0) + corners.max(axis=0)) / 2.0)


def _antialias(image: sitk.Image, out_spacing: float) -> sitk.Image:
    return antialias(image, (out_spacing,) * image.GetDimension())


def antialias(image: sitk.Image, out_spacing) -> sitk.Image:
    """Gaussian pre-smoothing along each axis that is being downsampled to ``out_spacing`` (mm per
    image axis): sigma = (out/in - 1)/2 input voxels (the usual anti-alias choice), i.e. (out - in)/2 mm.
    """
    sig = [max(0.0, (float(o) - s) / 2.0) for o, s in zip(out_spacing, image.GetSpacing())]
    if max(sig) < 1e-6:
        return image
    f = sitk.DiscreteGaussianImageFilter()
    f.SetVariance([v * v for v in sig])
    f.SetUseImageSpacing(True)
    f.SetMaximumKernelWidth(64)
    f.SetMaximumError(0.01)
    return f.Execute(image)


def _cube_reference(center_lps, grid: VolumeGrid) -> sitk.Image:
    ref = sitk.Image([grid.size] * 3, sitk.sitkUInt8)
    s = float(grid.spacing_mm)
    ref.SetSpacing((s, s, s))
    ref.SetOrigin(_cube_origin(center_lps, grid))
    return ref


def ct_to_model(
    image: sitk.Image, grid: VolumeGrid, remove_bed: bool = True, center_lps=None
) -> ModelVolume:
    """Body-centred cube of ``grid`` from an HU CT, resampled once (anti-aliased, linear)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise AxonInputError(None, "ct_to_model needs a 3D scalar HU image")
    hu = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, grid.hu_min, grid.hu_max)
    mask = body_mask(hu) if (remove_bed or center_lps is None) else None
    if center_lps is None:
        center_lps = _bbox_center_lps(mask)
    center_lps = tuple(float(c) for c in center_lps)
    ref = _cube_reference(center_lps, grid)
    smooth = _antialias(hu, grid.spacing_mm)
    cube = sitk.Resample(smooth, ref, sitk.Transform(), sitk.sitkLinear, grid.hu_min, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(cube)
    if remove_bed:
        m = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0)
        arr[sitk.GetArrayViewFromImage(m) < 0.5] = grid.hu_min
    return ModelVolume(array=hu_to_unit(arr, grid), center_lps=center_lps, grid=grid)


def model_to_hu(mv: ModelVolume) -> sitk.Image:
    """The model cube as an HU image on its own (identity-direction) grid."""
    return mv.to_hu_image()


def model_to_reference(mv: ModelVolume, reference_image: sitk.Image) -> sitk.Image:
    """Put a model cube back onto the user's CT grid (linear; outside the cube = -1024 HU)."""
    return sitk.Resample(
        mv.to_hu_image(), reference_image, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32
    )
