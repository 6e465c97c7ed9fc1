"""Body, lungs and bone from a HU volume by thresholds, with simple clean-up (numpy + scipy).

A starting point for the user to refine in Segment Editor, not an anatomical segmentation:
- body: above -500 HU (the skin surface), opened to cut thin bridges, largest connected component,
  holes filled slice by slice along the superior axis (lungs and airways belong to the body);
- lungs: -1024 to -400 HU inside the body (-1024 is the engine's air value), opened, small pieces dropped;
- bone: above 300 HU inside the body, small pieces dropped.
"""

from __future__ import annotations

import numpy as np

BODY_MIN_HU = -500.0
LUNG_HU = (-1024.0, -400.0)
BONE_MIN_HU = 300.0
MIN_LUNG_ML = 5.0  # a piece of "lung" smaller than this is noise or bowel gas
MIN_BONE_ML = 0.5
MORPHOLOGY_MAX_SPACING_MM = 3.0  # coarser grids skip the openings (they would erase thin anatomy)

SEGMENTS = (  # name, colour (RGB 0-1), Slicer-like defaults
    ("body", (0.89, 0.72, 0.58)),
    ("lungs", (0.77, 0.92, 1.0)),
    ("bone", (0.95, 0.84, 0.57)),
)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _drop_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def _fill_holes_per_slice(mask: np.ndarray, axis: int) -> np.ndarray:
    from scipy import ndimage

    out = np.moveaxis(mask.copy(), axis, 0)
    for k in range(out.shape[0]):
        out[k] = ndimage.binary_fill_holes(out[k])
    return np.moveaxis(out, 0, axis)


def threshold_masks(hu: np.ndarray, spacing_mm: tuple[float, float, float], axial_axis: int = 0) -> dict:
    """{"body", "lungs", "bone"} -> bool arrays shaped like `hu` ([k, j, i]).

    `spacing_mm` is per array axis; `axial_axis` is the array axis closest to superior.
    """
    from scipy import ndimage

    hu = np.asarray(hu, dtype=np.float32)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    fine = max(spacing_mm) <= MORPHOLOGY_MAX_SPACING_MM
    cross = ndimage.generate_binary_structure(3, 1)

    body = hu > BODY_MIN_HU
    if fine:
        body = ndimage.binary_opening(body, cross)
    if not body.any():
        raise ValueError(f"no body found: no voxel is above {BODY_MIN_HU:g} HU")
    body = _fill_holes_per_slice(_largest_component(body), axial_axis)

    lungs = (hu >= LUNG_HU[0]) & (hu <= LUNG_HU[1]) & body
    if fine:
        lungs = ndimage.binary_opening(lungs, cross)
    lungs = _drop_small(lungs, max(2, int(round(MIN_LUNG_ML / voxel_ml))))

    bone = (hu > BONE_MIN_HU) & body
    bone = _drop_small(bone, max(2, int(round(MIN_BONE_ML / voxel_ml))))
    return {"body": body, "lungs": lungs, "bone": bone}


# ----------------------------------------------------------------------------- in the scene
REF_SEGMENTATION = "AXONSegmentation"


class SegmentationLogic:
    """The masks as segments of a segmentation node (mixed into `logic.ReconstructionLogic`; Slicer is
    imported only here, so the masks above work without it)."""

    @staticmethod
    def _ensureSegmentationConverters() -> None:
        """Slicer registers these at start-up; bare slicer-core does not (harmless to repeat the check)."""
        import slicer

        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        rules = factory.GetConverterRules()
        if rules is None or len(rules) == 0:
            factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
            factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())

    def createSegmentation(self, volumeNode, segmentationNode=None):
        """Body, lungs and bone from thresholds (see `segmentation`), as segments of a segmentation
        node on the volume's grid (created, or reused from an earlier call)."""
        import slicer
        import vtk
        from vtk.util import numpy_support

        from . import mrmlio

        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("choose a reconstruction volume first")
        hu = slicer.util.arrayFromVolume(volumeNode)
        ijk_to_ras = mrmlio.ijkToRas(volumeNode, world=False)
        spacing_ijk = volumeNode.GetSpacing()
        axial_ijk = int(np.argmax(np.abs(ijk_to_ras[2, :3])))  # index axis closest to superior
        masks = threshold_masks(hu, tuple(reversed(spacing_ijk)), axial_axis=2 - axial_ijk)

        self._ensureSegmentationConverters()
        scene = slicer.mrmlScene
        if segmentationNode is None:
            segmentationNode = volumeNode.GetNodeReference(REF_SEGMENTATION)
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(volumeNode.GetName() + " segmentation"))
            volumeNode.SetNodeReferenceID(REF_SEGMENTATION, segmentationNode.GetID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        dims = volumeNode.GetImageData().GetDimensions()
        matrix = mrmlio.arrayToMatrix(ijk_to_ras)
        for name, color in SEGMENTS:
            old = segmentation.GetSegmentIdBySegmentName(name)
            if old:
                segmentation.RemoveSegment(old)
            image = slicer.vtkOrientedImageData()
            image.SetDimensions(*dims)
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            image.SetImageToWorldMatrix(matrix)
            voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(hu.shape)
            voxels[:] = masks[name].astype(np.uint8)
            segment = slicer.vtkSegment()
            segment.SetName(name)
            segment.SetColor(*color)
            segment.AddRepresentation(labelmap_name, image)
            segmentation.AddSegment(segment, name)
        segmentationNode.CreateDefaultDisplayNodes()
        return segmentationNode
