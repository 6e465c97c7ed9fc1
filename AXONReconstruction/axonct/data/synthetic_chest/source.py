"""The source chest of the synthetic generator: one CT and its label map on a working cube.

Why separate: reading and checking the inputs (paths, structures table, label-map geometry) and
resampling them once is the costly, error-prone part of making chests; each case then only samples
the cube this module returns.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from axonct.config import DataConfig, VolumeGrid
from axonct.errors import AxonInputError
from axonct.io.ct_preprocess import _bbox_center_lps, body_mask, ct_to_model

# Label groups, by TotalSegmentator-like structure names in structures.csv.
LUNG_LEFT = ("lung_upper_lobe_left", "lung_lower_lobe_left")
LUNG_RIGHT = ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")
HEART = ("heart",)
REQUIRED = LUNG_LEFT + LUNG_RIGHT + HEART
BLOOD_GROUP = "cardiac"
SPINE_GROUP = "vertebrae"
RIB_GROUP = "ribs"  # ribs, sternum and costal cartilages: the rib cage the fat shell is measured from
HUMERUS = {"left": "humerus_left", "right": "humerus_right"}  # labels given to the bone of added arms


@dataclass
class SourceCube:
    """The source CT (unit range) and its labels on the working cube, with what they came from."""

    ct_path: Path
    labels_path: Path | None  # None: labelled from the CT's HU
    structures: dict[str, tuple[int, str]]
    center_lps: tuple[float, float, float]
    work_grid: VolumeGrid
    unit: np.ndarray  # float32 [W, W, W]
    labels: np.ndarray  # [W, W, W] label ids
    slab_z: tuple[float, float]  # the scanned slab (z, mm); beyond it sampling repeats its end slices


@dataclass
class LabelIds:
    """Label ids of the structure groups the generator moves, colours or draws."""

    blood: list[int]
    spine: list[int]
    ribs: list[int]
    ids: dict[str, int]  # every REQUIRED structure
    lungs: tuple[tuple[int, ...], tuple[int, ...]]  # (left, right) lobes
    humerus: dict[str, int]  # side -> id (0 if the table has none)


def _header(path: Path) -> sitk.ImageFileReader:
    if not path.exists():
        raise AxonInputError(path, "does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise AxonInputError(path, f"cannot be read as an image ({exc})") from None
    return reader


def read_structures(path: str | Path) -> dict[str, tuple[int, str]]:
    """structure name -> (label id, group) from a TotalSegmentator-like CSV."""
    path = Path(path)
    if not path.exists():
        raise AxonInputError(path, "does not exist")
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
        out = {r["structure"].strip(): (int(r["id"]), (r.get("group") or "").strip()) for r in rows}
    except (KeyError, ValueError, TypeError) as exc:
        raise AxonInputError(path, f"is not a structures table with columns group,structure,id ({exc})") from None
    missing = [n for n in REQUIRED if n not in out]
    if missing:
        raise AxonInputError(path, f"lacks the structures {', '.join(missing)}")
    return out


def _check_same_geometry(labels_path: Path, reader: sitk.ImageFileReader, ct: sitk.Image, ct_path: Path) -> None:
    problems = []
    if tuple(reader.GetSize()) != tuple(ct.GetSize()):
        problems.append(f"size {reader.GetSize()} vs {ct.GetSize()}")
    if not np.allclose(reader.GetSpacing(), ct.GetSpacing(), rtol=1e-4, atol=1e-4):
        problems.append(f"spacing {reader.GetSpacing()} vs {ct.GetSpacing()}")
    if not np.allclose(reader.GetOrigin(), ct.GetOrigin(), rtol=0, atol=1e-2):
        problems.append(f"origin {reader.GetOrigin()} vs {ct.GetOrigin()}")
    if not np.allclose(reader.GetDirection(), ct.GetDirection(), atol=1e-4):
        problems.append("a different direction")
    if problems:
        raise AxonInputError(labels_path, f"label map geometry differs from the CT {ct_path}: " + "; ".join(problems))


def _read_label_map(labels_path: Path, structures_path: Path, image: sitk.Image, ct_path: Path):
    """(structures, label image as uint8) after checking the map lies on the CT's voxels."""
    structures = read_structures(structures_path)
    reader = _header(labels_path)
    _check_same_geometry(labels_path, reader, image, ct_path)
    labels = sitk.ReadImage(str(labels_path))
    if labels.GetNumberOfComponentsPerPixel() != 1 or labels.GetDimension() != 3:
        raise AxonInputError(labels_path, "is not a 3D scalar label map")
    labels = sitk.Cast(labels, sitk.sitkUInt8) if labels.GetPixelID() != sitk.sitkUInt8 else labels
    return structures, labels


def _labels_on_work_cube(labels: sitk.Image | None, work, grid: VolumeGrid, ct_path: Path):
    """(label array, structures or None) on the working cube: the given map resampled (nearest), or,
    without one, labels made from the cube's HU."""
    if labels is None:
        from axonct.data.auto_labels import NoLungsError, auto_label_map

        try:
            return auto_label_map(work.array * (grid.hu_max - grid.hu_min) + grid.hu_min, grid.spacing_mm)
        except NoLungsError as exc:
            raise AxonInputError(ct_path, f"cannot be labelled from its HU: {exc}; give a label map "
                                          "with --labels") from None
    w = work.array.shape[0]
    ref = sitk.Image([w] * 3, sitk.sitkUInt8)
    ref.SetSpacing((grid.spacing_mm,) * 3)
    ref.SetOrigin(work.origin_lps)
    lab = sitk.GetArrayFromImage(sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                               sitk.sitkUInt8))
    return lab, None


def _scanned_slab(unit: np.ndarray, spacing_mm: float) -> tuple[float, float]:
    """z range (mm) of the slices holding body: sampling beyond it repeats its end slices, so a
    shrunken body continues into the neck and abdomen instead of ending in air inside the cube."""
    w = unit.shape[0]
    zs = np.nonzero((unit > 0.004).any(axis=(1, 2)))[0]
    coords = (np.arange(w) - (w - 1) / 2.0) * spacing_mm
    return (float(coords[zs[0]]), float(coords[zs[-1]])) if zs.size else (-math.inf, math.inf)


def load_source(data_cfg: DataConfig, work_margin: float, ct_path: str | Path | None = None,
                labels_path: str | Path | None = None, structures_path: str | Path | None = None) -> SourceCube:
    """The source on a cube ``work_margin`` times the model cube (anatomy shifted in from outside the
    model cube is then real). A CT given without ``labels_path`` is labelled from its HU
    (`auto_labels`); the sample CT (no ``ct_path``) comes with its full label map."""
    from axonct.io.ct import read_ct_with_meta
    from axonct.io.sample_data import sample_ct_path, sample_labels_path, sample_structures_path

    auto = ct_path is not None and labels_path is None
    ct_path = Path(ct_path) if ct_path else sample_ct_path()
    if structures_path is not None and auto:
        raise AxonInputError(structures_path, "names the labels of a label map; give the map with --labels")
    labels_path = None if auto else (Path(labels_path) if labels_path else sample_labels_path())
    image, _ = read_ct_with_meta(ct_path)
    structures = labels = None
    if not auto:
        structures, labels = _read_label_map(labels_path, Path(structures_path) if structures_path
                                             else sample_structures_path(), image, ct_path)
    grid = data_cfg.grid
    hu = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, grid.hu_min, grid.hu_max)
    center_lps = _bbox_center_lps(body_mask(hu))  # the same centre `axon prepare` uses
    w = int(math.ceil(grid.size * work_margin / 2.0)) * 2
    work_grid = dataclasses.replace(grid, size=w, fov_mm=w * grid.spacing_mm)
    work = ct_to_model(image, work_grid, remove_bed=data_cfg.remove_bed, center_lps=center_lps)
    lab, auto_structures = _labels_on_work_cube(labels, work, grid, ct_path)
    return SourceCube(ct_path, labels_path, structures if structures is not None else auto_structures, center_lps,
                      work_grid, work.array, lab, _scanned_slab(work.array, grid.spacing_mm))


def label_ids(structures: dict[str, tuple[int, str]]) -> LabelIds:
    """The ids of the groups and structures the generator needs, from the structures table."""
    ids = {name: structures[name][0] for name in REQUIRED}
    return LabelIds(blood=sorted(i for i, g in structures.values() if g == BLOOD_GROUP),
                    spine=sorted(i for i, g in structures.values() if g == SPINE_GROUP),
                    ribs=sorted(i for i, g in structures.values() if g == RIB_GROUP),
                    ids=ids, lungs=(tuple(ids[n] for n in LUNG_LEFT), tuple(ids[n] for n in LUNG_RIGHT)),
                    humerus={side: structures[name][0] if name in structures else 0
                             for side, name in HUMERUS.items()})
