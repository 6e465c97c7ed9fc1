"""Volume nodes <-> SimpleITK images, with the coordinate conventions handled in one place.

Slicer keeps node geometry in RAS (IJK-to-RAS matrix); files and the engine use LPS (ITK/DICOM).
The two differ by a flip of the first two axes: RAS = diag(-1, -1, 1) * LPS. A node's array is
[k, j, i] and a SimpleITK array is [z, y, x]: the same memory order, so arrays pass through as is.
"""

from __future__ import annotations

import numpy as np

import slicer
import vtk

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Converts homogeneous LPS points to RAS and back (it is its own inverse)."""


def matrixToArray(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def arrayToMatrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def ijkToRas(node, world: bool = True) -> np.ndarray:
    """The node's IJK-to-RAS matrix, including a linear parent transform when `world`."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    a = matrixToArray(m)
    parent = node.GetParentTransformNode() if world else None
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(f"'{node.GetName()}' is under a non-linear transform; harden it first "
                             "(Data module: right-click the transform, Harden transform)")
        t = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(t)
        a = matrixToArray(t) @ a
    return a


def geometryFromIjkToRas(ijk_to_ras: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) in LPS, SimpleITK style, from an IJK-to-RAS matrix."""
    lps = LPS_RAS @ ijk_to_ras
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("volume has a zero spacing")
    direction = axes / spacing
    return tuple(float(s) for s in spacing), tuple(float(o) for o in lps[:3, 3]), tuple(direction.ravel())


def ijkToRasFromImage(image) -> np.ndarray:
    """The IJK-to-RAS matrix of a SimpleITK image (whose geometry is LPS)."""
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d * np.array(image.GetSpacing(), dtype=float)  # scale each column (index axis)
    m[:3, 3] = image.GetOrigin()
    return LPS_RAS @ m


def imageFromVolumeNode(node, dtype=None, world: bool = True):
    """A 3D scalar volume node as a SimpleITK image in LPS (a copy of the voxels)."""
    import SimpleITK as sitk

    array = slicer.util.arrayFromVolume(node)
    if array.ndim != 3:
        raise ValueError(f"'{node.GetName()}' has {array.shape[-1]} components per voxel; a scalar volume is needed")
    array = np.array(array, dtype=dtype or array.dtype, copy=True)
    image = sitk.GetImageFromArray(array)
    spacing, origin, direction = geometryFromIjkToRas(ijkToRas(node, world))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def updateVolumeNodeFromImage(node, image) -> None:
    """Put a SimpleITK image (LPS geometry) into a volume node (RAS geometry)."""
    import SimpleITK as sitk

    node.SetIJKToRASMatrix(arrayToMatrix(ijkToRasFromImage(image)))
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))


def copyGeometry(source, target, array: np.ndarray) -> None:
    """Fill `target` with `array` ([k, j, i]) on `source`'s grid (IJK-to-RAS without parent transforms)."""
    m = vtk.vtkMatrix4x4()
    source.GetIJKToRASMatrix(m)
    target.SetIJKToRASMatrix(m)
    slicer.util.updateVolumeFromArray(target, np.ascontiguousarray(array))


CT_WINDOW_LEVEL = (1500.0, -400.0)
"""A CT's window and level: the lung window, where lungs, soft tissue and bone are all readable."""


def setWindowLevel(node, window: float, level: float) -> None:
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(float(window), float(level))


def radiographPixels(node) -> tuple[np.ndarray, tuple[float, float]]:
    """The 2D pixels of a radiograph node ([rows, cols] or [rows, cols, components]) and the
    (column, row) spacing, in the node's array order (a PNG or DICOM loaded by Slicer keeps the
    file's row order: row 0 at the top)."""
    array = slicer.util.arrayFromVolume(node)
    spatial = array.shape[:3]
    if sum(s > 1 for s in spatial) > 2:
        dims = "x".join(str(s) for s in reversed(spatial))
        raise ValueError(f"'{node.GetName()}' is a 3-D volume ({dims} voxels), not a radiograph; "
                         "choose a single 2-D image")
    si, sj, sk = node.GetSpacing()
    if spatial[0] == 1:
        pixels, spacing = array[0], (si, sj)
    elif spatial[1] == 1:
        pixels, spacing = array[:, 0], (si, sk)
    else:
        pixels, spacing = array[:, :, 0], (sj, sk)
    return np.array(pixels, copy=True), (float(spacing[0]), float(spacing[1]))


def writeRadiograph(node, path) -> None:
    """A radiograph node as a 2-D NRRD with its pixel spacing (the engine reads it as a radiograph)."""
    import SimpleITK as sitk

    pixels, spacing = radiographPixels(node)
    image = sitk.GetImageFromArray(pixels, isVector=pixels.ndim == 3)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


