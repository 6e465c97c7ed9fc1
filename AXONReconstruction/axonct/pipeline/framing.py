"""Frame a real radiograph like the training DRRs before it reaches the networks.

The networks only ever saw DRRs in one geometry, where the lung fields sit at a fixed place and
size on the detector. A clinical radiograph shows the chest anywhere on a detector of any size,
with neck, abdomen or arms around it, and a child's chest is smaller than an adult's. Framing finds
the lung fields (the bundled lung-field network) and scales and centres the image so that they land
where the training geometry puts them. The patient's physical size, which framing normalises away,
comes back as the output grid's voxel size:

* measured, when the file has a pixel spacing (PixelSpacing; or a detector spacing, ImagerPixelSpacing
  or an image header's, corrected by the
  magnification from the stored distances or an assumed 1.1 for a PA chest at 180 cm);
* otherwise assumed: an adult thorax like the training CT's, scaled by a typical growth curve when
  the file states the patient's age, or the width the user gives (``--thorax-width-mm``).

A view whose pixel spacing can be trusted (DICOM PixelSpacing, or a detector spacing with the
source distances that give its magnification, as DICOM and `axon drr` headers carry) is framed
physically instead: centred, at the training geometry's millimetres per pixel, so the patient keeps
their own size and nothing is estimated. Lung-field framing is for images without such a spacing
(JPEG/PNG exports, DICOM without distances); it costs quality where the geometry is known (2.1 dB
on the DRRs of two held-out CTs: `axon evaluate --suite`). When no lung fields are found, a spacing still frames the image
physically (centred); without either, the whole image is padded to a square, and the report says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from axonct.config import DataConfig
from axonct.io.radiograph import Radiograph
from axonct.models.lung_fields import ViewChecks
from axonct.transforms.window import frame_window, to_model_view

@dataclass(frozen=True)
class TrainingBox:
    """Where a training geometry puts the lung fields, in millimetres on the isocentre plane from the
    detector's centre: the box of `project_lung_fields` of the sample CT's lung labels in its training
    pose (Testing checks each against the sample CT in its geometry). Frontal: width, centre (towards
    the patient's left) and lowest edge (domes and costophrenic angles). Lateral: centre and lowest
    edge (the posterior recesses reach lower than the frontal domes), and its lung-field height over
    the frontal's. The box moves with the geometry: with a nearer source the rays diverge more, and
    the lungs in front of the isocentre project larger."""

    frontal_width_mm: float
    frontal_center_mm: float
    frontal_bottom_mm: float
    lateral_center_mm: float
    lateral_bottom_mm: float
    lateral_height_ratio: float


TRAINING_BOXES = {
    # (source to isocentre, source to detector) in mm -> the box
    (541.0, 949.0): TrainingBox(260.5, 1.1, 118.0, 0.0, 131.4, 1.051),  # X2CT's geometry (tiny, cpu, paper)
    (1650.0, 1800.0): TrainingBox(250.7, 0.0, 103.8, 1.8, 114.6, 1.028),  # chest-room (`config.CHEST_ROOM`)
}
TRAINING_FRAME_PIXELS = 128  # the lung-field network reads views of this side


def training_box(data: DataConfig) -> TrainingBox:
    """The box of the geometry a weights folder trained in; for a geometry not measured here, that of
    the nearest source distance (the box changes by a few per cent between 54 and 165 cm)."""
    g = data.geometry
    key = min(TRAINING_BOXES, key=lambda k: abs(k[0] - g.source_to_isocenter_mm) + abs(k[1] - g.source_to_detector_mm))
    return TRAINING_BOXES[key]


@dataclass(frozen=True)
class TrainingFrame:
    """The training lung-field box in pixel edges of a ``pixels``-wide view of a geometry's detector."""

    pixels: int
    frontal_width: float
    frontal_center_col: float
    frontal_bottom_row: float
    lateral_center_col: float
    lateral_bottom_row: float
    lateral_height_ratio: float


def training_frame(data: DataConfig, pixels: int = TRAINING_FRAME_PIXELS) -> TrainingFrame:
    g, box = data.geometry, training_box(data)
    mm = g.detector_size_mm / pixels / g.magnification  # isocentre mm per view pixel
    half = pixels / 2
    return TrainingFrame(pixels, box.frontal_width_mm / mm, half + box.frontal_center_mm / mm,
                         half + box.frontal_bottom_mm / mm, half + box.lateral_center_mm / mm,
                         half + box.lateral_bottom_mm / mm, box.lateral_height_ratio)


PATIENT_PLANE_SOURCES = ("PixelSpacing", "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor")
"""Spacings already in the patient's plane; any other (ImagerPixelSpacing, an image header's) is the
detector's and is divided by the magnification."""

ASSUMED_PA_MAGNIFICATION = 1.1
"""Source 180 cm from the detector, the patient's mid-plane about 16 cm in front of it."""

AGE_WIDTH_FRACTION = ((0.0, 0.45), (1.0, 0.55), (3.0, 0.62), (6.0, 0.68), (10.0, 0.78), (14.0, 0.9),
                      (18.0, 1.0))
"""Approximate lung-field width relative to an adult's by age in years (typical growth of the inner
thoracic width); a stated assumption, used only when the file has no pixel spacing."""

SIZE_FACTOR_RANGE = (0.4, 1.5)
MIN_LUNG_FRACTION = 0.04  # of the overview; less is not a pair of lung fields


@dataclass
class ViewFrame:
    """How one input view was framed, in image pixel edges (pixel i spans [i, i + 1)); rows run
    down, columns towards the patient's left."""

    view: str
    method: str  # "lung-fields", "pixel-spacing" or "whole-image"
    center_rc: tuple[float, float]
    image_px_per_view_px: float
    coverage: float  # fraction of the framed view the image covers
    lung_bbox_rc: tuple[float, float, float, float] | None = None  # top, left, bottom, right (image pixel edges)
    spacing_mm: float | None = None  # patient-plane mm per image pixel, when known
    spacing_source: str | None = None
    model_geometry: bool = False  # the view is a whole DRR in the model's own geometry, left where it
    # is (physical framing, or none): consistency then pins its scale and position


@dataclass
class Framing:
    views: dict[str, ViewFrame] = field(default_factory=dict)
    size_factor: float = 1.0  # output voxel size / training voxel size
    size_source: str = "training geometry"
    thorax_width_mm: float | None = None  # the patient's lung-field width (measured or assumed)
    warnings: list[str] = field(default_factory=list)

    def pinned(self) -> tuple[bool, bool]:
        """(frontal, lateral): whether each view is in the model's own projection geometry."""
        return tuple(name in self.views and self.views[name].model_geometry for name in ("frontal", "lateral"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["views"] = {k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                      for k, v in d["views"].items()}
        d["size_factor"] = round(self.size_factor, 4)
        return d


def training_lung_width_mm(data: DataConfig) -> float:
    """The training CT's frontal lung-field width at the isocentre plane of ``data``'s geometry."""
    return training_box(data).frontal_width_mm


def age_width_fraction(age_years: float) -> float:
    ages, fracs = zip(*AGE_WIDTH_FRACTION)
    return float(np.interp(age_years, ages, fracs))


def patient_plane_spacing(rg: Radiograph) -> tuple[float | None, str | None]:
    """mm per image pixel at the patient's mid-plane, and where that came from."""
    if rg.pixel_spacing_mm is None:
        return None, None
    sp = float(np.mean(rg.pixel_spacing_mm))
    source = rg.meta.get("spacing_source") or "image header"
    if source not in PATIENT_PLANE_SOURCES:  # the detector plane: correct for the magnification
        sid = rg.meta.get("distance_source_to_detector_mm")
        sod = rg.meta.get("distance_source_to_patient_mm")
        if sid and sod and sid > sod > 0:
            return sp * sod / sid, f"{source} x source-patient / source-detector distance"
        return sp / ASSUMED_PA_MAGNIFICATION, f"{source} / {ASSUMED_PA_MAGNIFICATION} (assumed magnification)"
    return sp, source


def trusted_spacing(rg: Radiograph) -> bool:
    """Whether the patient-plane spacing is measured, not assumed: a spacing already in the patient's
    plane, or a detector spacing whose magnification the file's source distances give."""
    if rg.pixel_spacing_mm is None:
        return False
    if rg.meta.get("spacing_source") in PATIENT_PLANE_SOURCES:
        return True
    sid = rg.meta.get("distance_source_to_detector_mm")
    sod = rg.meta.get("distance_source_to_patient_mm")
    return bool(sid and sod and sid > sod > 0)


def _unmoved(rg: Radiograph, data: DataConfig, method: str, center, scale: float) -> bool:
    """Whether the framed view is exactly the model's own view: a whole model-geometry detector
    image, kept at its scale and centre (physical framing, or none)."""
    middle = (rg.pixels.shape[0] / 2, rg.pixels.shape[1] / 2)
    return (method in ("pixel-spacing", "whole-image") and abs(scale - 1.0) < 1e-6
            and tuple(map(float, center)) == middle and in_model_geometry(rg, data))


def in_model_geometry(rg: Radiograph, data: DataConfig) -> bool:
    """Whether the image is the model's whole detector, with its source distances and pixel spacing
    (to 0.1 mm and 0.1 %): a DRR written by `axon drr` or made by `model_view_radiographs`."""
    g = data.geometry
    sid, sod = rg.meta.get("distance_source_to_detector_mm"), rg.meta.get("distance_source_to_patient_mm")
    if rg.pixel_spacing_mm is None or not sid or not sod or tuple(rg.pixels.shape) != (g.detector_pixels,) * 2:
        return False
    return (abs(float(sid) - g.source_to_detector_mm) < 0.1 and abs(float(sod) - g.source_to_isocenter_mm) < 0.1
            and all(abs(float(s) / g.pixel_spacing_mm - 1.0) < 1e-3 for s in rg.pixel_spacing_mm))


def lung_bbox(prob: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """Edges (top, left, bottom, right) of the two largest lung-field components, or None.

    Coordinates are pixel edges: pixel i spans [i, i + 1), so a box's width is right - left."""
    from scipy import ndimage

    mask = prob > threshold
    if mask.mean() < MIN_LUNG_FRACTION:
        return None
    lab, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    keep = [k for k in keep if sizes[k - 1] >= 0.15 * sizes.max()]
    rows, cols = np.nonzero(np.isin(lab, keep))
    return float(rows.min()), float(cols.min()), float(rows.max() + 1), float(cols.max() + 1)


def _find_lungs(pixels: np.ndarray, segmenter, frame: TrainingFrame, hint: tuple | None):
    """Lung-field box in image pixel edges: on the whole image padded to a square, then once more
    on the window that first estimate frames (the network is most reliable at the training framing)."""
    h, w = pixels.shape
    size = frame.pixels
    k = max(h, w) / size
    b = lung_bbox(segmenter.probabilities(to_model_view(pixels, size)))
    if b is None:
        return None
    r_off, c_off = (size - max(1, round(h / k))) // 2, (size - max(1, round(w / k))) // 2
    box = ((b[0] - r_off) * k, (b[1] - c_off) * k, (b[2] - r_off) * k, (b[3] - c_off) * k)
    center, scale = _frame_from_bbox(box, frame, hint)
    view, _ = frame_window(pixels, center, scale, size)
    b2 = lung_bbox(segmenter.probabilities(view))
    if b2 is None:
        return box
    top, left = center[0] - size * scale / 2, center[1] - size * scale / 2
    return (top + b2[0] * scale, left + b2[1] * scale, top + b2[2] * scale, left + b2[3] * scale)


def looks_inverted(pixels: np.ndarray, segmenter, size: int = TRAINING_FRAME_PIXELS) -> bool:
    """Whether a frontal radiograph looks like a negative (lungs bright, bones dark), e.g. a
    MONOCHROME1 image exported without its inversion.

    Two cues must agree. The lung-field network reads the image and its negative: a negative shows
    clearly more lung on both sides (`ViewChecks`: ratio and difference of the smaller side's
    lung-field share) when inverted back. And the lung fields it found are not darker than the
    column between them (the mediastinum and spine, bright on every film the right way round).
    The network rule alone wrongly flagged 1 of 31 clinical-looking synthetic chests of the training
    patients with the three-patient network; the contrast alone is led astray where the network
    finds no clean lung fields. Together, with either network, they flagged none of those chests,
    the real CR or the 69 held-out real frontals, and caught 28 / 26 of the chests' negatives and
    60 / 66 of the real frontals' (one-patient / three-patient network)."""
    view = to_model_view(pixels, size)

    def lungs(img):
        m = segmenter.probabilities(img) > 0.5
        half = m.shape[1] // 2
        return float(min(m[:, :half].mean(), m[:, half:].mean())), m

    (given, _), (negative, negative_mask) = lungs(view), lungs(1.0 - view)
    checks = _view_checks(segmenter)
    if not (negative > checks.inverted_ratio * given and negative - given > checks.inverted_difference):
        return False
    contrast = lung_field_contrast(view, negative_mask)
    return contrast is None or contrast > 0.0


def lung_field_contrast(view: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean grey value of the lung fields minus that of the column between them, over the rows where
    both sides hold lung; negative on a film the right way round. None without two lung fields."""
    half = mask.shape[1] // 2
    rows = np.nonzero(mask[:, :half].any(1) & mask[:, half:].any(1))[0]
    cols = np.nonzero(mask.any(0))[0]
    if rows.size < 4 or cols.size < 4:
        return None
    column = np.zeros_like(mask)
    column[rows[0]:rows[-1] + 1, _centre_columns(cols)] = True
    column &= ~mask
    if not column.any():
        return None
    return float(view[mask].mean() - view[column].mean())


def _view_checks(segmenter) -> ViewChecks:
    """The thresholds chosen for this lung-field network (its card's), else the defaults."""
    return getattr(segmenter, "view_checks", None) or ViewChecks()


def view_shape(pixels: np.ndarray, segmenter, size: int = TRAINING_FRAME_PIXELS) -> tuple[float, float] | None:
    """(mirror symmetry, centre-column lung share) of the lung-field box, or None without lung fields."""
    view = to_model_view(pixels, size)
    mask = segmenter.probabilities(view) > 0.5
    cols, rows = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
    if cols.size < 4 or rows.size < 4:
        return None
    box = view[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    a = box - box.mean()
    b = a[:, ::-1]
    symmetry = float((a * b).sum() / max(float(np.sqrt((a * a).sum() * (b * b).sum())), 1e-12))
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    centre = mask[:, _centre_columns(cols)].mean()
    return symmetry, float(centre / max(float(mask[:, c0:c1].mean()), 1e-6))


def _centre_columns(cols: np.ndarray) -> slice:
    """The middle 16 % of the lung-field box whose columns are ``cols`` (the mediastinum on a frontal)."""
    mid, width = (cols[0] + cols[-1] + 1) / 2, cols[-1] + 1 - cols[0]
    return slice(int(mid - 0.08 * width), int(mid + 0.08 * width) + 1)


def looks_lateral(pixels: np.ndarray, segmenter) -> bool | None:
    """Whether a radiograph looks like a lateral view; None when no lung fields are found.

    A lateral's lung-field box is not mirror-symmetric (a frontal shows two lungs about the spine)
    and its centre columns hold at least the box's average lung field (a frontal has the mediastinum
    there). The defaults (`ViewChecks`) were chosen on 60 realistic DRR pairs of the training chests
    in the `cpu-wide` geometry (92 % of laterals, 5 % of frontals flagged); on the held-out real
    radiographs of `../shared/data/cxr/eval` they flagged 20 of 20 laterals and 1 of 67 frontals.
    It only warns, and only about the frontal input: 8 % of training laterals look frontal to it,
    the sample case's among them, so a lateral input is not judged."""
    shape = view_shape(pixels, segmenter)
    if shape is None:
        return None
    checks = _view_checks(segmenter)
    return shape[0] < checks.lateral_symmetry_below and shape[1] > checks.lateral_centre_above


def _frame_from_bbox(box, frame: TrainingFrame, hint=None) -> tuple[tuple[float, float], float]:
    """Window centre (image edges) and image pixels per training-view pixel that put a lung box
    where training puts it.

    Frontal (``hint`` None): the width sets the scale, the centre column and the lowest lung edge
    the position. Lateral (``hint`` = frontal lung height in training-view pixels): the lung height
    matches the frontal's (one patient), the centre column is the training one.
    """
    top, left, bottom, right = box
    half = frame.pixels / 2
    if hint is None:
        scale = (right - left) / frame.frontal_width
        center_col = (left + right) / 2 + (half - frame.frontal_center_col) * scale
        center_row = bottom + (half - frame.frontal_bottom_row) * scale
    else:
        scale = (bottom - top) / (hint * frame.lateral_height_ratio)
        center_col = (left + right) / 2 + (half - frame.lateral_center_col) * scale
        center_row = bottom + (half - frame.lateral_bottom_row) * scale
    return (center_row, center_col), scale


def frame_inputs(frontal: Radiograph, lateral: Radiograph | None, data: DataConfig, segmenter=None,
                 mode: str = "auto", thorax_width_mm: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, Framing]:
    """[2, P, P] framed views in [0, 1], the [2] view mask and how they were framed.

    ``mode``: "auto" (a trusted pixel spacing, else the lung fields, else an assumed spacing, else the
    whole image) or "none" (the whole image padded to a square).
    """
    if mode not in ("auto", "none"):
        raise ValueError(f"framing must be 'auto' or 'none', not {mode!r}")
    size = data.geometry.detector_pixels
    frame = training_frame(data)  # the lung-field network's resolution
    scale_to_training = size / frame.pixels
    iso_mm_per_px = data.geometry.detector_size_mm / size / data.geometry.magnification
    views = np.zeros((2, size, size), np.float32)
    mask = np.array([1.0, 0.0], np.float32)
    framing = Framing()
    frontal_height = None  # training-view pixels
    for i, (rg, name) in enumerate(((frontal, "frontal"), (lateral, "lateral"))):
        if rg is None:
            continue
        mask[i] = 1.0
        pixels = np.asarray(rg.pixels, np.float32)
        spacing, spacing_source = patient_plane_spacing(rg)
        box = None
        hint = None if name == "frontal" else frontal_height
        physical = mode == "auto" and spacing is not None and trusted_spacing(rg)
        if not physical and mode == "auto" and segmenter is not None and (name == "frontal" or hint is not None):
            box = _find_lungs(pixels, segmenter, frame, hint)
        if physical:
            center, scale, method = (pixels.shape[0] / 2, pixels.shape[1] / 2), iso_mm_per_px / spacing, "pixel-spacing"
        elif box is not None:
            center, scale = _frame_from_bbox(box, frame, hint)
            scale /= scale_to_training
            method = "lung-fields"
        elif mode == "auto" and spacing is not None:
            center, scale, method = (pixels.shape[0] / 2, pixels.shape[1] / 2), iso_mm_per_px / spacing, "pixel-spacing"
        else:
            center, scale, method = (pixels.shape[0] / 2, pixels.shape[1] / 2), max(pixels.shape) / size, "whole-image"
        views[i], coverage = frame_window(pixels, center, scale, size)
        framing.views[name] = ViewFrame(name, method, (float(center[0]), float(center[1])), float(scale),
                                        coverage, None if box is None else tuple(float(x) for x in box),
                                        spacing, spacing_source, _unmoved(rg, data, method, center, scale))
        if name == "frontal" and box is not None:
            frontal_height = (box[2] - box[0]) / (scale * scale_to_training)
        elif name == "frontal" and physical and segmenter is not None and lateral is not None:
            framed_box = lung_bbox(segmenter.probabilities(views[i]))  # the lateral's height hint
            if framed_box is not None:
                frontal_height = (framed_box[2] - framed_box[0]) / scale_to_training
        if mode == "auto" and name == "frontal" and segmenter is not None and looks_inverted(pixels, segmenter):
            framing.warnings.append("frontal: the image looks inverted (lungs bright, bones dark); check its "
                                    "photometric interpretation (DICOM MONOCHROME1/2) or how it was exported")
        if mode == "auto" and name == "frontal" and segmenter is not None and looks_lateral(pixels, segmenter):
            framing.warnings.append("frontal: the image looks like a lateral view (no two lung fields about the "
                                    "spine); check that --frontal and --lateral are not swapped")
        if mode == "auto" and method != "lung-fields" and not physical:
            why = "the weights have no lung-field network" if segmenter is None else "no lung fields found"
            framing.warnings.append(f"{name}: {why}; framed by "
                                    f"{'the pixel spacing' if method == 'pixel-spacing' else 'the whole image'}")
        framing.warnings += [f"{name}: {note}" for note in rg.meta.get("input_notes", [])]
    _size(framing, frontal, data, thorax_width_mm, iso_mm_per_px)
    return views, mask, framing


def _size(framing: Framing, frontal: Radiograph, data: DataConfig, thorax_width_mm, iso_mm_per_px) -> None:
    """The patient's size relative to the training CT: measured, given or assumed."""
    f = framing.views["frontal"]
    adult = training_lung_width_mm(data)
    if f.method != "lung-fields":
        framing.size_factor, framing.size_source = 1.0, "training geometry (not framed by the lung fields)"
        if f.method == "pixel-spacing":
            framing.size_source = f"the patient's own: framed physically by the pixel spacing ({f.spacing_source})"
            if thorax_width_mm is not None:
                framing.warnings.append("--thorax-width-mm was not used: the frontal view's pixel spacing "
                                        "gives the patient's size")
        return
    width_px = f.lung_bbox_rc[3] - f.lung_bbox_rc[1]
    if thorax_width_mm is not None:
        width, source = float(thorax_width_mm), f"given: lung fields {float(thorax_width_mm):.0f} mm wide"
    elif f.spacing_mm is not None:
        width, source = width_px * f.spacing_mm, f"measured from the pixel spacing ({f.spacing_source})"
    else:
        age = frontal.meta.get("patient_age_years")
        if age is not None and age < 18:
            width = adult * age_width_fraction(age)
            source = (f"assumed from the patient's age ({age:g} years): lung fields {width:.0f} mm wide, "
                      f"{age_width_fraction(age):.2f} x the training adult's")
        else:
            width, source = adult, f"assumed adult, like the training CT: lung fields {adult:.0f} mm wide"
    factor = width / adult
    lo, hi = SIZE_FACTOR_RANGE
    if not lo <= factor <= hi:
        framing.warnings.append(f"a lung-field width of {width:.0f} mm is implausible; size clamped to "
                                f"{min(max(factor, lo), hi):.2f} x the training CT")
        factor = min(max(factor, lo), hi)
    framing.size_factor, framing.size_source, framing.thorax_width_mm = float(factor), source, float(width)


def model_view_radiographs(views: np.ndarray, view_mask, data: DataConfig) -> tuple[Radiograph, Radiograph | None]:
    """Views rendered in the model's own projection geometry (DRRs of a CT, a cache's training views)
    as radiographs that say so: the detector spacing and the source distances `axon drr` writes in
    its headers. Framing then keeps them exactly as they are (physical framing at scale 1), so the
    demo and the evaluations feed them through the very path `axon reconstruct` takes."""
    g = data.geometry
    meta = {"spacing_source": "model projection geometry", "distance_source_to_detector_mm": g.source_to_detector_mm,
            "distance_source_to_patient_mm": g.source_to_isocenter_mm}
    out = []
    for i, name in enumerate(("frontal", "lateral")):
        if i >= len(views) or float(view_mask[i]) <= 0:
            out.append(None)
            continue
        out.append(Radiograph(pixels=np.asarray(views[i], np.float32), pixel_spacing_mm=(g.pixel_spacing_mm,) * 2,
                              view=name, source=f"model-geometry {name} view", meta=dict(meta)))
    if out[0] is None:
        raise ValueError("a frontal view is needed")
    return out[0], out[1]
