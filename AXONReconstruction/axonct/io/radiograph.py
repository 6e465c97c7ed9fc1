"""Read a chest radiograph (DICOM or an ordinary image file) into the engine's convention.

Every reader returns a :class:`Radiograph` whose pixels are ``[row, col]`` float32 in ``[0, 1]``,
row 0 superior, bright = attenuating (lungs dark, bone bright), so real images look like the DRRs
the models were trained on.  Anything that cannot be used raises :class:`AxonInputError` naming the
file, because the Slicer panel and the CLI show that message to the user verbatim.
"""

from __future__ import annotations

import json

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from axonct.config import VIEWS
from axonct.errors import AxonInputError, itk_reason, refuse_special_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic", ".ima")
# 2-D files in these formats are accepted as radiographs; 3-D ones are refused.
ITK_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".hdr", ".img")

# Projection X-ray modalities; OT (other, e.g. digitised film) is accepted because scanned chest
# films are commonly exported that way.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "DR", "OT")
_MODALITY_NAMES = {
    "CT": "CT", "MR": "MR", "PT": "PET", "NM": "nuclear medicine", "US": "ultrasound",
    "MG": "mammography", "XA": "X-ray angiography", "RF": "fluoroscopy", "IO": "intra-oral dental",
    "PX": "panoramic dental", "OP": "ophthalmic", "ES": "endoscopy", "SEG": "segmentation",
    "RTIMAGE": "radiotherapy portal", "RTSTRUCT": "radiotherapy structure set",
    "RTDOSE": "radiotherapy dose", "SR": "structured report", "PR": "presentation state",
}

_FRONTAL_POSITIONS = {"PA", "AP"}
_LATERAL_POSITIONS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL"}
_OBLIQUE_POSITIONS = {"LAO", "RAO", "LPO", "RPO", "OBL", "OBLIQUE", "LO", "RO"}
_FRONTAL_WORDS = {"PA", "AP", "FRONTAL", "PA/AP", "POSTEROANTERIOR", "ANTEROPOSTERIOR", "PAAP"}
_LATERAL_WORDS = {"LAT", "LATERAL", "LL", "RL", "SEITLICH", "LATERALE"}

_FORMAT_NAMES = {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".png": "png", ".bmp": "bmp"}
_MIN_SIDE = 16  # smaller than this cannot be a radiograph (icons, thumbnails of thumbnails)

WORKING_SIDE = 2048
"""Radiographs with a longer side are reduced on reading by an integer factor (block averaging, in
float32, a band of rows at a time) to at most this: far more than any model view (128-256 px) needs,
and no full-size floating-point copy is ever made. Full-resolution DR detectors are 3000-4300 px."""

MAX_SIDE = 16384
MAX_MEGAPIXELS = 100
"""Larger images are refused from their header, before decoding: no chest detector or film scan
comes near (a 43 x 43 cm detector at 43 um is 10000 x 10000 = 100 megapixels)."""

_BAND_VALUES = 1 << 22  # values per band of rows while reducing (16 MB in float32)


@dataclass
class Radiograph:
    """A radiograph in the engine convention; ``meta`` keeps what downstream code may want to show."""

    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None = None
    view: str | None = None
    view_position: str | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]


def read_radiograph(path: str | Path, view: str | None = None, *, invert: bool = False) -> Radiograph:
    """Read a DICOM, PNG, JPEG, TIFF (or 2-D NRRD/MHA/NIfTI) radiograph.

    ``view`` ("frontal"/"lateral") is what the caller says the image is; a DICOM whose
    ViewPosition says otherwise is refused, since swapping the views silently ruins the result.
    ``invert=True`` flips the grey scale on top of the automatic handling, for image files saved
    with bone dark (DICOM MONOCHROME1 is always handled without it).
    """
    if view is not None and view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS} or None, not {view!r}")
    p = Path(path)
    refuse_special_path(p, "radiograph")
    if not p.exists():
        raise AxonInputError(p, "file does not exist")
    if p.is_dir():
        raise AxonInputError(p, "is a folder; choose a single radiograph file")
    if p.stat().st_size == 0:
        raise AxonInputError(p, "file is empty")

    name = p.name.lower()
    try:
        if _has_dicom_magic(p):
            rg = _read_dicom(p, view)
        elif name.endswith(IMAGE_EXTENSIONS):
            rg = _read_image_file(p, view)
        elif name.endswith(ITK_EXTENSIONS):
            rg = _read_itk_file(p, view)
        elif name.endswith(DICOM_EXTENSIONS) or "." not in name:
            rg = _read_dicom(p, view)  # DICOM without the 128-byte preamble
        else:
            raise AxonInputError(
                p, f"unsupported file type '{p.suffix}'; use DICOM, PNG, JPEG or TIFF"
            )
    except MemoryError:
        raise AxonInputError(p, f"ran out of memory while decoding it{_size_text(p)}; reduce it to about "
                                f"{WORKING_SIDE} px on the long side first") from None

    if invert:
        rg.pixels = (1.0 - rg.pixels).astype(np.float32)
        rg.meta["inverted"] = not rg.meta.get("inverted", False)
    rg.meta["user_inverted"] = bool(invert)
    return rg


# ----------------------------------------------------------------------------------------- DICOM


def _has_dicom_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise AxonInputError(p, f"could not be opened ({e.strerror or e})") from e
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom(p: Path, view: str | None) -> Radiograph:
    ds = _open_dicom(p)
    modality = _check_single_radiograph(p, ds)
    # Settle the view before decoding: a swapped view should fail fast, not after a large decode.
    view_meta: dict = {}
    view_position = _str_or_none(ds.get("ViewPosition"))
    final_view = _resolve_view(p, ds, view_position, view, view_meta)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_dimensions(p, rows, cols)

    colour_notes: list[str] = []
    arr, factor, photometric = _decode_grey_pixels(p, ds, colour_notes)
    meta = _dicom_meta(ds, modality, photometric, view_meta)
    meta["input_notes"] += colour_notes
    grey = _monochrome_display(p, ds, arr, meta, is_mono=photometric.startswith("MONOCHROME"))
    grey = _bright_is_attenuating(ds, photometric, grey, meta)
    spacing = _scaled(_dicom_spacing(ds, meta), factor)
    _note_reduction(meta, rows, cols, arr.shape)

    grey, spacing = _reorient(grey, spacing, meta["patient_orientation"], final_view, meta)
    return Radiograph(
        pixels=np.ascontiguousarray(grey, dtype=np.float32),
        pixel_spacing_mm=spacing,
        view=final_view,
        view_position=view_position,
        source=str(p),
        meta=meta,
    )


def _open_dicom(p: Path):
    """The dataset, or a refusal when the file holds no DICOM attributes at all."""
    import pydicom

    try:
        ds = pydicom.dcmread(p, force=True)
    except Exception as e:  # pydicom raises many exception types on garbage
        raise AxonInputError(p, f"is not a readable DICOM file ({_short(e)})") from e
    if len(ds) == 0 or ("SOPClassUID" not in ds and "PixelData" not in ds and "Modality" not in ds):
        raise AxonInputError(p, "is not a readable DICOM file (no DICOM attributes found)")
    return ds


def _check_single_radiograph(p: Path, ds) -> str:
    """Refuse, from the header alone, what is not one projection image; returns the modality."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        kind = _MODALITY_NAMES.get(modality, modality)
        raise AxonInputError(
            p, f"is {_article(kind)} {kind} image (Modality {modality}), not a radiograph "
            f"(expected Modality {', '.join(RADIOGRAPH_MODALITIES[:3])})",
        )
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise AxonInputError(p, "has no pixel data (is it a DICOMDIR, report or other non-image DICOM?)")

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise AxonInputError(
            p, f"has {frames} frames (a multi-frame or 3-D DICOM), not a single radiograph"
        )
    return modality


def _decode_grey_pixels(p: Path, ds, notes: list[str]) -> tuple[np.ndarray, int, str]:
    """(stored values as one grey [row, col] image, reduced for WORKING_SIDE; the reduction factor;
    the photometric interpretation). Colour and palette data become grey unless really coloured."""
    try:
        raw = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
        raise AxonInputError(
            p, f"pixel data could not be decoded (transfer syntax {ts_name}): {_short(e)}"
        ) from e

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and raw.ndim != 2:
        raise AxonInputError(p, f"pixel data has shape {tuple(raw.shape)}, a 3-D DICOM, not a single radiograph")
    _check_size(p, raw)
    factor = _reduction_factor(*raw.shape[:2])
    if samples > 1:
        arr = _grey_from_colour(p, _reduce(raw, factor), photometric or "RGB", notes)
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = _grey_from_colour(p, _reduce(apply_color_lut(raw, ds), factor), "palette colour", notes)
    else:
        arr = _reduce(raw, factor)
        if factor > 1 and ds.get("ModalityLUTSequence"):
            arr = np.rint(arr).astype(raw.dtype)  # a lookup table needs stored (integer) values
    if arr.ndim != 2:
        raise AxonInputError(p, f"pixel data has shape {tuple(arr.shape)}, a 3-D DICOM, not a single radiograph")
    return arr, factor, photometric


def _dicom_meta(ds, modality: str, photometric: str, view_meta: dict) -> dict:
    """What the report and the framing keep from the header (acquisition, patient, view)."""
    meta: dict = {
        "format": "dicom",
        "modality": modality or None,
        "photometric": photometric,
        "bits": int(ds.get("BitsStored", 0) or 0) or None,
        "patient_id": _str_or_none(ds.get("PatientID")),
        "laterality": _str_or_none(ds.get("ImageLaterality")) or _str_or_none(ds.get("Laterality")),
        "body_part": _str_or_none(ds.get("BodyPartExamined")),
        "presentation_intent": _str_or_none(ds.get("PresentationIntentType")),
        "patient_orientation": _orientation(ds),
        "distance_source_to_detector_mm": _float_or_none(ds.get("DistanceSourceToDetector")),
        "distance_source_to_patient_mm": _float_or_none(ds.get("DistanceSourceToPatient")),
        "patient_age_years": patient_age_years(ds.get("PatientAge")),
        **view_meta,
    }
    meta["input_notes"] = _age_notes(ds.get("PatientAge"), meta)
    return meta


def _bright_is_attenuating(ds, photometric: str, grey: np.ndarray, meta: dict) -> np.ndarray:
    """Bright must mean attenuating: MONOCHROME1 (or MONOCHROME2 under an INVERSE presentation LUT)
    shows its lowest values white, so those images are flipped."""
    invert = photometric == "MONOCHROME1"
    if photometric == "MONOCHROME2" and str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        invert = True
    if invert:
        grey = 1.0 - grey
    meta["inverted"] = invert
    return grey


def _monochrome_display(p: Path, ds, arr: np.ndarray, meta: dict, *, is_mono: bool) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, to [0, 1] as displayed (before MONOCHROME1 inversion)."""
    from pydicom.pixels import apply_modality_lut

    arr = np.asarray(arr)
    if not is_mono:  # colour data converted to grey: the LUTs do not apply
        meta["voi"] = None
        return _minmax(p, arr.astype(np.float64))

    values = apply_modality_lut(arr, ds) if ds.get("ModalityLUTSequence") or (
        "RescaleSlope" in ds and "RescaleIntercept" in ds) else arr
    meta["modality_lut"] = (
        "sequence" if ds.get("ModalityLUTSequence")
        else ("rescale" if "RescaleSlope" in ds and "RescaleIntercept" in ds else None)
    )
    values = np.asarray(values, dtype=np.float64)
    _check_not_blank(p, values)

    out = _apply_voi_lut_sequence(ds, values, meta)
    if out is None:
        out = _apply_window(ds, values, meta)
    if out is None:
        meta["voi"] = None
        return _minmax(p, values)
    if float(np.ptp(out)) <= 0:
        raise AxonInputError(
            p, "is blank after applying its window (Window Center/Width or VOI LUT): "
            "every pixel falls outside it",
        )
    return out


def _apply_voi_lut_sequence(ds, values: np.ndarray, meta: dict) -> np.ndarray | None:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    from pydicom.pixels.processing import apply_voi

    try:
        desc = list(item.LUTDescriptor)
        n, first = int(desc[0]) or 2**16, int(desc[1])
        # The LUT's own output range defines black and white, as on a viewer.
        table = apply_voi(np.arange(first, first + n, dtype=np.int64), ds).astype(np.float64)
        out = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
    except Exception:
        return None
    lo, hi = float(table.min()), float(table.max())
    if hi <= lo:
        return None
    meta["voi"] = "lut"
    return np.clip((out - lo) / (hi - lo), 0.0, 1.0)


def _apply_window(ds, values: np.ndarray, meta: dict) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 windowing straight to [0, 1]; a broken window is ignored."""
    center = _first_float(ds.get("WindowCenter"))
    width = _first_float(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if func == "SIGMOID":
        if width <= 0:
            return None
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    else:
        if func == "LINEAR_EXACT":
            c, w = center, width
            if w <= 0:
                return None
        else:  # LINEAR or anything unknown
            if width < 1:
                return None
            c, w = center - 0.5, width - 1.0
        if w == 0:
            out = (values > c).astype(np.float64)
        else:
            out = np.clip((values - c) / w + 0.5, 0.0, 1.0)
    meta["voi"] = "window"
    meta["window"] = (center, width, func)
    return out


def _dicom_spacing(ds, meta: dict) -> tuple[float, float] | None:
    """Spacing in the patient plane when the file allows it; 0 or missing means unknown."""
    ps = _pair_or_none(ds.get("PixelSpacing"))
    ips = _pair_or_none(ds.get("ImagerPixelSpacing"))
    notes = meta.setdefault("input_notes", [])
    for keyword, pair in (("PixelSpacing", ps), ("ImagerPixelSpacing", ips)):
        raw = ds.get(keyword)
        if raw is not None and pair is None and str(raw).strip() not in ("", "[]"):
            notes.append(f"its {keyword} ({_spacing_text(raw)}) is unusable (zero, negative or not a number); the "
                         "pixel size is treated as unknown")
    meta["imager_pixel_spacing_mm"] = ips
    mag = _float_or_none(ds.get("EstimatedRadiographicMagnificationFactor"))
    meta["magnification"] = mag if mag and mag > 0 else None
    if ps is not None:
        meta["spacing_source"] = "PixelSpacing"
        return ps
    if ips is not None:
        if mag and mag > 0:
            meta["spacing_source"] = "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
            return (ips[0] / mag, ips[1] / mag)
        meta["spacing_source"] = "ImagerPixelSpacing"  # detector plane, not corrected
        return ips
    meta["spacing_source"] = None
    return None


def _resolve_view(p: Path, ds, view_position: str | None, view: str | None, meta: dict) -> str | None:
    file_view, why = _view_from_position(view_position)
    if file_view is None:
        file_view, why = _view_from_code_sequence(ds)
    strong = file_view is not None
    if file_view is None:
        file_view, why = _view_from_descriptions(ds)
    meta["view_hint"] = file_view
    meta["view_hint_source"] = why

    if view is None:
        return file_view if file_view in VIEWS else None
    if strong and file_view != view:
        kind = file_view if file_view else "unknown"
        raise AxonInputError(p, f"{why} ({kind}) but it was given as the {view} view")
    return view


def _view_from_position(vp: str | None) -> tuple[str | None, str | None]:
    if not vp:
        return None, None
    v = vp.strip().upper()
    if v in _FRONTAL_POSITIONS:
        return "frontal", f"ViewPosition is {vp}"
    if v in _LATERAL_POSITIONS:
        return "lateral", f"ViewPosition is {vp}"
    if v in _OBLIQUE_POSITIONS:
        return "oblique", f"ViewPosition is {vp}"
    return None, None


def _view_from_code_sequence(ds) -> tuple[str | None, str | None]:
    seq = ds.get("ViewCodeSequence")
    if not seq:
        return None, None
    meaning = str(seq[0].get("CodeMeaning", "") or "")
    m = meaning.lower()
    if "lateral" in m:
        return "lateral", f"ViewCodeSequence is '{meaning}'"
    if "postero-anterior" in m or "antero-posterior" in m or "posteroanterior" in m or "anteroposterior" in m:
        return "frontal", f"ViewCodeSequence is '{meaning}'"
    if "oblique" in m:
        return "oblique", f"ViewCodeSequence is '{meaning}'"
    return None, None


def _view_from_descriptions(ds) -> tuple[str | None, str | None]:
    """Weak hint from free-text descriptions; ambiguous text (e.g. 'PA AND LAT') gives nothing."""
    for key in ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription",
                "ImageComments", "StudyDescription"):
        text = str(ds.get(key, "") or "")
        words = set(re.split(r"[^A-Z/]+", text.upper())) - {""}
        words |= {w2 for w in words for w2 in w.split("/") if w2}
        f, lat = bool(words & _FRONTAL_WORDS), bool(words & _LATERAL_WORDS)
        if f != lat:
            return ("frontal" if f else "lateral"), f"{key} is '{text}'"
    return None, None


def _orientation(ds) -> tuple[str, str] | None:
    po = ds.get("PatientOrientation")
    if po is None:
        return None
    items = str(po).split("\\") if isinstance(po, str) else list(po)
    vals = [str(v).strip().upper() for v in items]
    if len(vals) != 2 or not all(vals):
        return None
    return vals[0], vals[1]


_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def _reorient(img: np.ndarray, spacing, orientation, view: str | None, meta: dict):
    """Bring the image to the display convention using PatientOrientation.

    Frontal: columns run to the patient's left, rows to the feet; lateral: columns run posterior.
    Only the dominant (first) letter of each direction is used; obliques are left alone.
    """
    meta["reoriented"] = []
    if orientation is None or view not in VIEWS:
        return img, spacing
    col_dir, row_dir = orientation[0][0], orientation[1][0]
    if col_dir in "HF" and row_dir not in "HF":  # image stored rotated by 90 degrees
        img = img.T
        spacing = None if spacing is None else (spacing[1], spacing[0])
        col_dir, row_dir = row_dir, col_dir
        meta["reoriented"].append("transpose")
    want_col = "L" if view == "frontal" else "P"
    if col_dir == _OPPOSITE[want_col]:
        img = img[:, ::-1]
        meta["reoriented"].append("flip_left_right")
    if row_dir == "H":
        img = img[::-1, :]
        meta["reoriented"].append("flip_up_down")
    return img, spacing


# ------------------------------------------------------------------------------ other file types


def _read_image_file(p: Path, view: str | None) -> Radiograph:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Sizes are checked against MAX_MEGAPIXELS here, below Pillow's own refusal.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
        with im:
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            if n_frames > 1:
                raise AxonInputError(p, f"has {n_frames} pages/frames; give a single radiograph")
            cols, rows = im.size
            _check_dimensions(p, rows, cols)
            if im.format == "JPEG" and _reduction_factor(rows, cols) > 1:
                factor = _reduction_factor(rows, cols)  # let the decoder scale down (1/2, 1/4, 1/8)
                im.draft(im.mode, (-(-cols // factor), -(-rows // factor)))
            im.load()
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            mode = im.mode
            w, h = im.size
            bits_dtype = _pil_to_array(im.crop((0, 0, 1, 1))).dtype
            factor = _reduction_factor(h, w)
            if factor > 1:
                arr = _reduce_bands(lambda r0, r1: _pil_to_array(im.crop((0, r0, w, r1))), h, w, factor)
            else:
                arr = _pil_to_array(im)
    except (AxonInputError, MemoryError):
        raise
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(found.group(1)) / 1e6:.0f} megapixels)" if found else ""
        raise AxonInputError(p, f"is far too large for a radiograph{size}; {_limits_text()}") from None
    except UnidentifiedImageError as e:
        raise AxonInputError(p, "is not a readable image (the file is corrupt or not an image)") from e
    except Exception as e:
        raise AxonInputError(p, f"could not be read as an image ({_short(e)})") from e

    arr = _exif_orient(arr, orientation)
    notes: list[str] = []
    if arr.ndim == 3:
        arr = _grey_from_colour(p, arr, "RGB", notes)
    _check_size(p, arr)
    pixels = _minmax(p, arr.astype(np.float64 if factor == 1 else np.float32, copy=False))
    meta = {
        "format": _FORMAT_NAMES.get(p.suffix.lower(), p.suffix.lower().lstrip(".")),
        "modality": None,
        "photometric": mode,
        "bits": int(bits_dtype.itemsize * 8) if bits_dtype.kind in "ui" else None,
        "patient_id": None,
        "laterality": None,
        "inverted": False,
        "spacing_source": None,
        "view_hint": None,
        "reoriented": [],
        "input_notes": notes,
    }
    _note_reduction(meta, rows, cols, pixels.shape, orientation >= 5)
    return Radiograph(pixels=pixels.astype(np.float32), pixel_spacing_mm=None, view=view,
                      view_position=None, source=str(p), meta=meta)


def _pil_to_array(im) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif mode in ("LA", "La"):
        im = im.getchannel(0)
    elif mode not in ("L", "I", "F", "RGB", "RGBA") and not mode.startswith("I;16"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # alpha carries no attenuation
    return arr


def _read_itk_file(p: Path, view: str | None) -> Radiograph:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        size = reader.GetSize()
    except Exception as e:
        raise AxonInputError(p, f"could not be read ({_short(e)})") from e
    real_dims = [s for s in size if s > 1]
    if len(real_dims) >= 3:
        dims = "x".join(str(s) for s in size)
        raise AxonInputError(p, f"is a 3-D volume ({dims} voxels), not a radiograph")
    if len(real_dims) == 2:
        _check_dimensions(p, real_dims[1], real_dims[0])
    try:
        img = reader.Execute()
    except MemoryError:
        raise
    except Exception as e:
        raise AxonInputError(p, f"could not be read ({_short(e)})") from e
    arr = sitk.GetArrayViewFromImage(img)
    arr = np.squeeze(arr) if img.GetNumberOfComponentsPerPixel() == 1 else arr.reshape(
        [s for s in arr.shape[:-1] if s > 1] + [arr.shape[-1]])
    if arr.ndim not in (2, 3):
        raise AxonInputError(p, f"has shape {tuple(arr.shape)}, not a 2-D radiograph")
    _check_size(p, arr)
    factor = _reduction_factor(*arr.shape[:2])
    rows, cols = arr.shape[:2]
    arr = _reduce(arr, factor) if factor > 1 else np.array(arr)
    del img
    notes: list[str] = []
    if arr.ndim == 3:
        arr = _grey_from_colour(p, arr, "RGB", notes)
    if arr.ndim != 2:
        raise AxonInputError(p, f"has shape {tuple(arr.shape)}, not a 2-D radiograph")
    sp = [float(s) for s, n in zip(reader.GetSpacing(), size) if n > 1]
    default_spacing = len(sp) == 2 and all(abs(v - 1.0) < 1e-9 for v in sp)
    # 1 x 1 mm is what formats without a spacing (and Slicer volumes made from PNG/JPEG) carry: no
    # radiograph has 1 mm pixels, so it is read as "unknown" rather than as a measured spacing
    spacing = _scaled((sp[1], sp[0]) if len(sp) == 2 and min(sp) > 0 and not default_spacing else None, factor)
    meta = {"format": "itk", "modality": None, "photometric": None, "bits": None, "patient_id": None,
            "laterality": None, "inverted": False, "spacing_source": "image header" if spacing else None,
            "view_hint": None, "reoriented": [], "input_notes": notes,
            "spacing_note": "1 x 1 mm in the header is a format default; treated as unknown" if default_spacing else None}
    meta.update(_axon_drr_distances(reader))
    _note_reduction(meta, rows, cols, arr.shape)
    return Radiograph(pixels=_minmax(p, arr.astype(np.float64 if factor == 1 else np.float32)).astype(np.float32),
                      pixel_spacing_mm=spacing, view=view, view_position=None, source=str(p), meta=meta)


# ------------------------------------------------------------------------------------- helpers


def _axon_drr_distances(reader) -> dict:
    """Source-detector and source-isocentre distances of a DRR written by `axon drr` (its header keeps
    the view geometry), so framing knows its spacing is on the detector and by how much it magnifies."""
    try:
        geom = json.loads(reader.GetMetaData("axon_geometry")) if reader.HasMetaDataKey("axon_geometry") else None
        source = np.asarray(geom["source_mm"], float)
        detector = np.asarray(geom["detector_center_mm"], float)
    except (ValueError, KeyError, TypeError):
        return {}
    sod, sid = float(np.linalg.norm(source)), float(np.linalg.norm(detector - source))
    if not (np.isfinite(sod) and np.isfinite(sid) and sid > sod > 0):
        return {}
    return {"distance_source_to_patient_mm": sod, "distance_source_to_detector_mm": sid}


TINT_NOTE = ("is a tinted greyscale image (one grey scale printed in colour, as in a scanned or published "
             "film); it was read along its tint")
"""Why a colour file was accepted: its channels follow one grey scale, so nothing of the film is lost."""

TINT_SHARE = 0.98
"""Share of the colour variance one same-signed direction must carry for colour pixels to count as a
tinted grey scale. Tinted film scans carry about 0.995; a grey film with a coloured overlay on 8 % of
it about 0.95; colours that move against each other (a colour map) have mixed signs."""


def _grey_from_colour(p: Path, arr: np.ndarray, what: str, notes: list[str]) -> np.ndarray:
    """Accept colour-encoded grey (a JPEG export of a greyscale film) and tinted grey (a film printed
    with a colour cast), but refuse real colour, whose channels do not follow one grey scale."""
    rgb = np.asarray(arr, dtype=np.float64)[..., :3]
    if rgb.shape[-1] < 3:
        return rgb[..., 0]
    rng = float(rgb.max() - rgb.min())
    if rng > 0:
        diff = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
                + np.abs(rgb[..., 0] - rgb[..., 2])) / 3.0
        if float(diff.mean()) / rng >= 0.02:
            direction = _tint_direction(rgb)
            if direction is None:
                raise AxonInputError(p, f"is a colour ({what}) image; radiographs must be greyscale")
            notes.append(TINT_NOTE)
            return (rgb - rgb.reshape(-1, 3).min(axis=0)) @ direction
    return rgb.mean(axis=-1)


def _tint_direction(rgb: np.ndarray) -> np.ndarray | None:
    """Unit colour direction (all channels rising together) that carries TINT_SHARE of the variance;
    None when the colours vary in more than one way."""
    flat = rgb.reshape(-1, 3)
    sample = flat[:: max(1, flat.shape[0] // 200_000)]
    values, vectors = np.linalg.eigh(np.cov(sample, rowvar=False))
    if not np.isfinite(values).all() or values[-1] <= 0 or values[-1] / values.sum() < TINT_SHARE:
        return None
    direction = vectors[:, -1] * np.sign(vectors[:, -1].sum())
    return direction if (direction > 0).all() else None


def _limits_text() -> str:
    return (f"AXON reads radiographs up to {MAX_MEGAPIXELS} megapixels and {MAX_SIDE} px a side "
            f"(it works at {WORKING_SIDE} px); reduce the image first")


def _check_dimensions(p: Path, rows: int, cols: int) -> None:
    """Refuse absurd sizes from the header, before any pixel is decoded."""
    if 0 < min(rows, cols) < _MIN_SIDE:
        raise AxonInputError(p, f"is only {cols}x{rows} pixels, too small to be a radiograph")
    if max(rows, cols) > MAX_SIDE or rows * cols > MAX_MEGAPIXELS * 1_000_000:
        raise AxonInputError(p, f"is {cols}x{rows} pixels ({rows * cols / 1e6:.0f} megapixels), larger than any "
                                f"chest radiograph; {_limits_text()}")


def _size_text(p: Path) -> str:
    """' (W x H pixels)' from the file header when it can be read cheaply, else ''."""
    try:
        if _has_dicom_magic(p) or p.suffix.lower() in DICOM_EXTENSIONS:
            import pydicom

            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            cols, rows = int(ds.Columns), int(ds.Rows)
        elif p.name.lower().endswith(ITK_EXTENSIONS):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
            cols, rows = reader.GetSize()[:2]
        else:
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(p) as im:
                    cols, rows = im.size
    except Exception:
        return ""
    return f" ({cols}x{rows} pixels, {rows * cols / 1e6:.0f} megapixels)"


def _reduction_factor(rows: int, cols: int) -> int:
    return max(1, math.ceil(max(rows, cols) / WORKING_SIDE))


def _reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of ``factor`` x ``factor`` pixels (float32; [rows, cols] or [rows, cols, channels])."""
    if factor <= 1:
        return arr
    return _reduce_bands(lambda r0, r1: arr[r0:r1], arr.shape[0], arr.shape[1], factor)


def _reduce_bands(get_rows, rows: int, cols: int, factor: int) -> np.ndarray:
    """Block mean of an image read a band of rows at a time through ``get_rows(r0, r1)``.

    Only one band is ever converted to float32, so memory stays at the decoded image plus a few
    megabytes. Partial blocks at the right and bottom edges are averaged over the pixels they have.
    """
    col_starts = np.arange(0, cols, factor)
    col_counts = np.diff(np.append(col_starts, cols)).astype(np.float32)
    n_rows = len(range(0, rows, factor))
    blocks_per_band = max(1, _BAND_VALUES // max(1, cols * factor))
    out = None
    for b0 in range(0, n_rows, blocks_per_band):
        r0, r1 = b0 * factor, min(rows, (b0 + blocks_per_band) * factor)
        band = np.asarray(get_rows(r0, r1), dtype=np.float32)
        starts = np.arange(0, r1 - r0, factor)
        sums = np.add.reduceat(np.add.reduceat(band, starts, axis=0), col_starts, axis=1)
        counts = np.diff(np.append(starts, r1 - r0)).astype(np.float32)[:, None] * col_counts[None, :]
        if sums.ndim == 3:
            counts = counts[..., None]
        if out is None:
            out = np.empty((n_rows,) + sums.shape[1:], np.float32)
        out[b0:b0 + len(starts)] = sums / counts
    return out


def _scaled(spacing: tuple[float, float] | None, factor: int) -> tuple[float, float] | None:
    return spacing if spacing is None or factor == 1 else (spacing[0] * factor, spacing[1] * factor)


def _note_reduction(meta: dict, rows: int, cols: int, shape, transposed: bool = False) -> None:
    out_rows, out_cols = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    if (out_rows, out_cols) != (rows, cols):
        meta["reduced"] = {"from_px": [cols, rows], "to_px": [int(out_cols), int(out_rows)]}


def _exif_orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF Orientation (1-8) to [rows, cols(, channels)], as Pillow's exif_transpose does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.swapaxes(np.rot90(a, 2), 0, 1), 8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return arr if op is None else np.ascontiguousarray(op(arr))


def _check_size(p: Path, arr: np.ndarray) -> None:
    """Refuse images too small to be a radiograph ([rows, cols] or [rows, cols, channels])."""
    if arr.ndim in (2, 3) and min(arr.shape[:2]) < _MIN_SIDE:
        raise AxonInputError(
            p, f"is only {arr.shape[1]}x{arr.shape[0]} pixels, too small to be a radiograph"
        )


def _check_not_blank(p: Path, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise AxonInputError(p, "contains invalid pixel values (NaN or infinity)")
    if float(np.ptp(values)) <= 0:
        raise AxonInputError(
            p, f"is blank: every pixel has the same value ({float(values.flat[0]):g})"
        )


def _minmax(p: Path, values: np.ndarray) -> np.ndarray:
    _check_not_blank(p, values)
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo)


def _str_or_none(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _float_or_none(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _first_float(v) -> float | None:
    if v is None:
        return None
    if not isinstance(v, (str, bytes)) and hasattr(v, "__len__"):
        if len(v) == 0:
            return None
        v = v[0]
    return _float_or_none(v)


def _pair_or_none(v) -> tuple[float, float] | None:
    """A DICOM spacing pair; 0, negative or missing means the spacing is unknown."""
    if v is None or isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        f = _float_or_none(v)
        return (f, f) if f and f > 0 else None
    vals = [_float_or_none(x) for x in v]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or any(x is None or x <= 0 for x in vals):
        return None
    return (float(vals[0]), float(vals[1]))


def _spacing_text(raw) -> str:
    values = list(raw) if hasattr(raw, "__len__") and not isinstance(raw, (str, bytes)) else [raw]
    as_float = [_float_or_none(v) for v in values]
    return " x ".join(f"{f:g}" if f is not None else repr(str(v)) for f, v in zip(as_float, values)) + " mm"


AGE_PLACEHOLDERS = {"000Y"}
"""PatientAge values that mean "not recorded" in practice, not a newborn (a newborn's age is given
in days or weeks)."""


def _age_notes(raw, meta: dict) -> list[str]:
    """Drops a placeholder PatientAge from ``meta`` (it would size an adult as a newborn) and says so."""
    text = str(raw or "").strip().upper()
    if text in AGE_PLACEHOLDERS:
        meta["patient_age_years"] = None
        return [f"its PatientAge {text} is a placeholder, not an age; the patient is taken as an adult unless the "
                "file has a pixel spacing or --thorax-width-mm is given"]
    return []


def patient_age_years(value) -> float | None:
    """DICOM PatientAge ("045Y", "006M", "010W", "003D") in years; None when absent or malformed."""
    text = str(value or "").strip().upper()
    units = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        return None
    return round(int(text[:-1]) * units[text[-1]], 3)


def _article(word: str) -> str:
    """'an MR', 'an ultrasound', 'a CT': acronyms are read letter by letter."""
    first = word[:1]
    spoken_vowel = first.lower() in "aeiou" or (word[:2].isupper() and first in "FHLMNRSX")
    return "an" if spoken_vowel else "a"


def _short(e: Exception) -> str:
    if "ITK ERROR" in str(e):
        return itk_reason(e)[:200]
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]
