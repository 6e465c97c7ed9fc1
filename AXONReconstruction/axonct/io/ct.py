"""Read a chest CT from whatever a user points at, as a float32 HU SimpleITK image.

Users hand us DICOM folders straight from archives (LIDC-IDRI trees mix CT with CR/SR series),
single slices, or research formats. Every refusal is an ``AxonInputError`` that names the file or
folder and says what is wrong in words a clinician can act on.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from axonct.errors import AxonInputError, itk_reason, refuse_special_path
from axonct.io.volume_integrity import check_not_truncated, parse_nifti_header

MIN_SLICES = 8
"""Fewer slices than this cannot be a chest CT volume (and a 3D model cannot use it)."""

MAX_GAP_DEVIATION = 0.25
"""Slice gaps may deviate from their median by at most this fraction (see ``_slice_geometry``)."""

MAX_SHEAR_MM = 1.0
"""Slice origins may drift off the slice normal by this much (rounding); more is gantry tilt."""

AIR_BELOW_HU = -500.0
MIN_AIR_FRACTION = 0.001
"""A chest CT has air (around the body, in the lungs, in the trachea) near -1000 HU: at least this
fraction of its voxels must lie below ``AIR_BELOW_HU``, or the values are not Hounsfield units."""

HU_STORAGE_OFFSET = 1024.0
"""CTs are often stored as HU+1024 (unsigned); without the rescale the values start near 0."""

log = logging.getLogger("axonct.io.ct")

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_HEADER_TAGS = [
    "SOPClassUID", "Modality", "SeriesInstanceUID", "SeriesDescription", "PatientID",
    "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber", "Rows", "Columns",
    "NumberOfFrames", "PixelSpacing",
]


@dataclass
class SeriesInfo:
    """One DICOM series found under a folder, enough for a user to pick from a list."""

    folder: str
    series_uid: str
    modality: str
    n_files: int
    description: str = ""
    patient_id: str = ""
    files: tuple[str, ...] = field(default=(), repr=False)


@dataclass
class _Slice:
    path: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    instance: int
    frames: int


# ----------------------------------------------------------------------------- helpers


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in VOLUME_SUFFIXES + DICOM_SUFFIXES + IMAGE_2D_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _stem(path: Path) -> str:
    name = path.name
    suf = _suffix(path)
    return name[: -len(suf)] if suf and name.lower().endswith(suf) else name


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _looks_like_dicom(path: Path) -> bool:
    """A file we must be able to parse: DICOM extension, or a DICOM preamble."""
    return _suffix(path) in DICOM_SUFFIXES or _has_dicom_preamble(path)


def _read_header(path: Path):
    """Parse the header of a DICOM file; None for DICOMDIR indexes; AxonInputError if corrupt."""
    import pydicom

    force = not _has_dicom_preamble(path)  # .dcm files written without the 128-byte preamble
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=force, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # noqa: BLE001 - any parse failure of a DICOM-looking file means corrupt
        raise AxonInputError(path, f"cannot be read as DICOM (corrupt or not a DICOM file: {exc})") from None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
        return None
    if path.name.upper() == "DICOMDIR":
        return None
    if "SeriesInstanceUID" not in ds:
        raise AxonInputError(
            path, "cannot be read as DICOM: it has no SeriesInstanceUID (the file is corrupt or truncated)"
        )
    return ds


def _floats(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _walk_dicom(folder: Path) -> dict[str, list[tuple[Path, object]]]:
    groups: dict[str, list[tuple[Path, object]]] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = Path(root) / name
            if not _looks_like_dicom(p):
                continue  # annotations (.xml), notes, thumbnails: not ours to judge
            ds = _read_header(p)
            if ds is None:
                continue
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((p, ds))
    return groups


def _common_folder(paths: list[Path]) -> str:
    return os.path.commonpath([str(p.parent) for p in paths])


# ----------------------------------------------------------------------------- DICOM


def find_ct_series(folder: str | Path) -> list[SeriesInfo]:
    """List every DICOM series under ``folder`` (recursively), CT series first, largest first.

    Non-CT series are listed too so a caller can explain why nothing usable was found.
    """
    folder = Path(folder)
    if not folder.exists():
        raise AxonInputError(folder, "does not exist")
    if not folder.is_dir():
        raise AxonInputError(folder, "is not a folder")
    out = []
    for uid, items in _walk_dicom(folder).items():
        ds0 = items[0][1]
        out.append(
            SeriesInfo(
                folder=_common_folder([p for p, _ in items]),
                series_uid=uid,
                modality=str(ds0.get("Modality", "") or "").upper(),
                n_files=len(items),
                description=str(ds0.get("SeriesDescription", "") or ""),
                patient_id=str(ds0.get("PatientID", "") or ""),
                files=tuple(str(p) for p, _ in items),
            )
        )
    out.sort(key=lambda s: (s.modality != "CT", -s.n_files, s.folder))
    return out


def _choose_series(series: list[SeriesInfo], where: Path) -> SeriesInfo:
    if not series:
        raise AxonInputError(where, "no DICOM files found in this folder or its subfolders")
    cts = [s for s in series if s.modality == "CT"]
    if not cts:
        found = Counter(s.modality or "unknown" for s in series)
        listing = ", ".join(f"{m} ({n} series)" for m, n in sorted(found.items()))
        raise AxonInputError(
            where, f"contains no CT series; found modality {listing}. AXON needs a CT volume (Modality CT)"
        )
    return cts[0]  # already sorted: most files first


def _slices_of(info: SeriesInfo) -> list[_Slice]:
    import pydicom

    out = []
    for f in info.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True, specific_tags=_HEADER_TAGS)
        try:
            instance = int(ds.get("InstanceNumber", 0) or 0)
        except (TypeError, ValueError):
            instance = 0
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            frames = 1
        out.append(
            _Slice(
                path=f,
                position=_floats(ds.get("ImagePositionPatient")),
                orientation=_floats(ds.get("ImageOrientationPatient")),
                instance=instance,
                frames=frames,
            )
        )
    return out


def _slice_geometry(slices: list[_Slice], where: Path):
    """Sort slices along the slice normal and check the gaps.

    Rule: with ``m`` the median gap between neighbouring slices, every gap must lie within
    ``m * (1 +- MAX_GAP_DEVIATION)``. Rounding jitter passes; a missing slice (gap 2m) or mixed
    slice spacings are refused, because a regular grid would then put anatomy at the wrong place.
    Slices at the same position (duplicates) are dropped, keeping the lowest InstanceNumber.
    Tilted-gantry (sheared) stacks are refused: a regular grid would misplace them.
    """
    missing = [s for s in slices if s.position is None or s.orientation is None or len(s.orientation) != 6]
    if missing:
        raise AxonInputError(
            missing[0].path,
            "has no usable ImagePositionPatient/ImageOrientationPatient, so the slices cannot be placed in 3D",
        )
    # keep the majority orientation (drops localizer images sharing the series)
    keyed = Counter(tuple(round(v, 3) for v in s.orientation) for s in slices)
    main = keyed.most_common(1)[0][0]
    dropped = len(slices) - keyed[main]
    slices = [s for s in slices if tuple(round(v, 3) for v in s.orientation) == main]

    row = np.array(slices[0].orientation[:3])
    col = np.array(slices[0].orientation[3:])
    row /= np.linalg.norm(row)
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    slices.sort(key=lambda s: (float(np.dot(s.position, normal)), s.instance))
    pos = np.array([np.dot(s.position, normal) for s in slices])
    keep = [0] + [i for i in range(1, len(slices)) if pos[i] - pos[i - 1] > 1e-3]
    duplicates = len(slices) - len(keep)
    slices = [slices[i] for i in keep]
    pos = pos[keep]
    direction = np.stack([row, col, normal], axis=1)  # columns = axes, as SimpleITK wants
    offsets = np.array([s.position for s in slices]) - np.array(slices[0].position)
    sideways = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if sideways.max() > MAX_SHEAR_MM:
        raise AxonInputError(
            where,
            f"slices shift sideways by up to {sideways.max():.1f} mm along the stack (gantry tilt or sheared "
            "series); AXON needs slices stacked straight along their normal — resample the series first",
        )
    if len(slices) < 2:
        return slices, direction, None, dropped, duplicates
    gaps = np.diff(pos)
    med = float(np.median(gaps))
    bad = np.abs(gaps - med) > MAX_GAP_DEVIATION * med
    if bad.any():
        i = int(np.argmax(bad))
        raise AxonInputError(
            where,
            f"irregular slice spacing: the gap between {Path(slices[i].path).name} and "
            f"{Path(slices[i + 1].path).name} is {gaps[i]:.2f} mm while most gaps are {med:.2f} mm "
            "(missing or mixed slices); export a complete series with uniform spacing",
        )
    z_spacing = float((pos[-1] - pos[0]) / (len(pos) - 1))
    return slices, direction, z_spacing, dropped, duplicates


def _find_unreadable(files: list[str]) -> str | None:
    for f in files:
        try:
            sitk.ReadImage(f)
        except RuntimeError:
            return f
    return None


def _read_dicom_series(info: SeriesInfo, where: Path) -> tuple[sitk.Image, dict]:
    slices = _slices_of(info)
    notes: list[str] = []
    if len(slices) == 1 and slices[0].frames > 1:
        # one multi-frame (enhanced) file holds the whole volume
        try:
            image = sitk.ReadImage(slices[0].path, sitk.sitkFloat32)
        except RuntimeError as exc:
            raise AxonInputError(slices[0].path, f"cannot be read as DICOM ({itk_reason(exc)})") from None
        return image, {"n_slices": image.GetDepth() if image.GetDimension() == 3 else 1, "warnings": notes}
    if len(slices) < MIN_SLICES:
        name = slices[0].path if len(slices) == 1 else info.folder
        what = "is a 2D image (a single slice)" if len(slices) == 1 else f"has only {len(slices)} slices"
        raise AxonInputError(name, f"{what}; a CT volume needs at least {MIN_SLICES} slices")
    slices, direction, z_spacing, dropped, duplicates = _slice_geometry(slices, Path(info.folder))
    if dropped:
        notes.append(f"ignored {dropped} image(s) with a different orientation (localizer?)")
    if duplicates:
        notes.append(f"ignored {duplicates} duplicate slice(s) at the same position")
    if len(slices) < MIN_SLICES:
        raise AxonInputError(
            info.folder, f"has only {len(slices)} distinct slices; a CT volume needs at least {MIN_SLICES} slices"
        )
    files = [s.path for s in slices]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)  # GDCM applies RescaleSlope/Intercept per slice
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        culprit = _find_unreadable(files)
        if culprit is not None:
            raise AxonInputError(culprit, "cannot be read as DICOM (pixel data corrupt or truncated)") from None
        raise AxonInputError(
            info.folder, f"the slices cannot be stacked into one volume (different sizes?): {itk_reason(exc)}"
        ) from None
    spacing = list(image.GetSpacing())
    spacing[2] = z_spacing
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(float(v) for v in slices[0].position))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image, {"n_slices": len(slices), "warnings": notes}


# ----------------------------------------------------------------------------- checks


def _nifti_nonfinite(path: Path) -> str | None:
    """Scan a float NIfTI's raw voxels: ITK's NIfTI reader silently turns NaN into 0.

    Returns "NaN", "infinite" or None. Reads in chunks so a 500 MB CT does not double in memory.
    """
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = parse_nifti_header(f.read(540))
            if header is None:
                return None
            kind = {16: "f4", 64: "f8"}.get(header.datatype)
            if kind is None:
                return None  # integer voxels cannot hold NaN
            dtype = np.dtype(header.byteorder + kind)
            f.seek(header.data_start)
            found = None
            remaining = header.n_voxels * dtype.itemsize
            chunk = (1 << 24) // dtype.itemsize * dtype.itemsize
            while remaining > 0:
                buf = f.read(min(chunk, remaining))
                if not buf:
                    break
                remaining -= len(buf)
                v = np.frombuffer(buf[: len(buf) // dtype.itemsize * dtype.itemsize], dtype=dtype)
                if np.isnan(v).any():
                    return "NaN"
                if found is None and np.isinf(v).any():
                    found = "infinite"
            return found
    except (OSError, EOFError, ValueError):
        return None  # unreadable files are reported by the image reader


def _as_3d_float(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise AxonInputError(
            path, f"has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour image?); a CT has one"
        )
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, 0])
        dim = 3
    if dim == 2:
        raise AxonInputError(path, f"is a 2D image; a CT volume needs at least {MIN_SLICES} slices")
    if dim != 3:
        raise AxonInputError(path, f"is a {dim}D image; a CT must be a single 3D volume")
    smallest = min(image.GetSize())
    if smallest < MIN_SLICES:
        what = "is a 2D image (a single slice)" if smallest == 1 else f"has only {smallest} slices"
        raise AxonInputError(path, f"{what}; a CT volume needs at least {MIN_SLICES} slices")
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def _air_fraction(a: np.ndarray, offset: float = 0.0) -> float:
    """Fraction of voxels that are air (below ``AIR_BELOW_HU``) once ``offset`` is added."""
    return float(np.count_nonzero(a < AIR_BELOW_HU - offset)) / max(1, a.size)


PADDING_MIN_FRACTION = 0.01
PADDING_GAP = 100.0
PADDING_BELOW = -1100.0
"""Padding outside a scanner's reconstruction circle: one constant value, the volume's lowest, below
any air (-2000, -3024, -32768 ...), on at least 1 % of the voxels and at least 100 below every scanned
value. Air clipped to one value (-1024) is not padding."""


def _scanned_values(a: np.ndarray) -> np.ndarray:
    """The voxels inside the scanned field (padding left out), where Hounsfield units are judged: a
    padding ring counted as air let a CT stored as HU+1024 pass the check."""
    low = float(a.min())
    if low > PADDING_BELOW:
        return np.asarray(a).ravel()
    pad = a == low
    if np.count_nonzero(pad) < PADDING_MIN_FRACTION * a.size:
        return np.asarray(a).ravel()
    rest = a[~pad]
    if rest.size == 0 or float(rest.min()) < low + PADDING_GAP:
        return np.asarray(a).ravel()
    return rest


DETACHED_DATA_KEYS = {".mhd": "elementdatafile", ".nhdr": "data file"}


def _check_detached_data(path: Path) -> None:
    """A header whose pixel data lives in another file (.mhd -> .raw, .nhdr -> .raw/.gz): name that
    file when it is missing, instead of ITK's "cannot read the header" about the header itself."""
    key = DETACHED_DATA_KEYS.get(_suffix(path))
    if key is None:
        return
    try:
        text = path.read_text(errors="replace")[:65536]
    except OSError as exc:
        raise AxonInputError(path, f"cannot be read ({exc.strerror or exc})") from None
    for line in text.splitlines():
        name, sep, value = line.partition("=" if key == "elementdatafile" else ":")
        if sep and name.strip().lower() == key:
            value = value.strip()
            if value.upper() in ("LOCAL", "") or value.upper().startswith("LIST"):
                return  # data in the header itself, or a list ITK resolves
            data = (path.parent / value.split()[0]) if not Path(value).is_absolute() else Path(value)
            if not data.exists():
                raise AxonInputError(path, f"its pixel data file {data.name} is missing (looked for {data})")
            return


class _native_stderr_quiet:
    """Silence what C++ libraries print on file descriptor 2 (e.g. MetaIO's "Cannot open data file")
    while one call runs: the error that follows is reported as one line of ours."""

    def __enter__(self):
        import sys

        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False


MAX_STORED_VALUE = 32767.0
SPACING_RANGE_MM = (0.05, 20.0)
MAX_EXTENT_MM = 2000.0
"""What a CT can physically be: voxels from 0.05 mm (micro-CT) to 20 mm, no side longer than 2 m,
values within the 16-bit range scanners store."""


def _check_geometry(image: sitk.Image, path: Path) -> None:
    """Refuse spacings and extents no chest CT has, with the numbers (a 100 mm voxel makes a 12.8 m body)."""
    spacing, size = image.GetSpacing(), image.GetSize()
    lo, hi = SPACING_RANGE_MM
    if not all(np.isfinite(s) and lo <= s <= hi for s in spacing):
        raise AxonInputError(path, f"has voxels of {' x '.join(f'{s:g}' for s in spacing)} mm; a CT's voxels are "
                                   f"{lo:g}-{hi:g} mm (check the header's spacing or units)")
    extent = [n * s for n, s in zip(size, spacing)]
    if max(extent) > MAX_EXTENT_MM:
        raise AxonInputError(path, f"spans {' x '.join(f'{e:.0f}' for e in extent)} mm; no CT is larger than "
                                   f"{MAX_EXTENT_MM:.0f} mm a side (check the header's spacing or units)")


def _check_values(image: sitk.Image, path: Path, hu_offset: float = 0.0) -> tuple[sitk.Image, list[str]]:
    """Refuse values that are not Hounsfield units; apply an explicit ``hu_offset`` first if given.

    Returns the (possibly shifted) image and notes for the user.
    """
    a = sitk.GetArrayViewFromImage(image)
    if np.isnan(a).any():
        raise AxonInputError(path, f"contains NaN values ({int(np.isnan(a).sum())} voxels); cannot use it as a CT")
    if not np.isfinite(a).all():
        raise AxonInputError(path, "contains infinite values; cannot use it as a CT")
    lo, hi = float(a.min()), float(a.max())
    if hi > MAX_STORED_VALUE or lo < -MAX_STORED_VALUE - 1:
        raise AxonInputError(path, f"has values from {lo:.4g} to {hi:.4g}, beyond the 16-bit range CT scanners store "
                                   "(-32768 to 32767): not Hounsfield units (scaled, or another quantity)")
    notes = []
    if hu_offset:
        if _air_fraction(_scanned_values(a)) >= MIN_AIR_FRACTION:
            raise AxonInputError(
                path, f"already has air near -1000 HU (values run from {lo:.4g} to {hi:.4g}); leave out --hu-offset, "
                "which is only for CTs stored as HU+1024 without their rescale")
        image = sitk.ShiftScale(image, float(hu_offset), 1.0)
        a = sitk.GetArrayViewFromImage(image)
        lo, hi = lo + hu_offset, hi + hu_offset
        note = f"added {hu_offset:g} to every value (--hu-offset); values now run from {lo:.4g} to {hi:.4g} HU"
        log.warning("%s: %s", path, note)
        notes.append(note)
    field = _scanned_values(a)  # padding outside the scan circle is not air
    if field.size < a.size:
        lo = float(field.min())
    range_text = f"values run from {lo:.4g} to {hi:.4g}" + (" inside the scanned field" if field.size < a.size else "")
    if hi < AIR_BELOW_HU or hi - lo < 200:
        raise AxonInputError(
            path,
            f"does not look like a CT in Hounsfield units ({range_text}; "
            "a chest CT has air near -1000 and soft tissue near 0-100)",
        )
    air = _air_fraction(field)
    if air < MIN_AIR_FRACTION:
        problem = (f"does not look like a CT in Hounsfield units: no air ({range_text}, "
                   f"{100 * air:.2g}% of voxels below {AIR_BELOW_HU:g}; a chest CT has air near -1000 HU)")
        shifted_air = _air_fraction(field, -HU_STORAGE_OFFSET)
        if not hu_offset and -50 <= lo <= 100 and hi <= 6000 and shifted_air >= MIN_AIR_FRACTION:
            problem += (f"; it looks like HU+1024 stored without its rescale: if it is a CT, "
                        f"rerun with --hu-offset -{HU_STORAGE_OFFSET:g}")
        raise AxonInputError(path, problem)
    return image, notes


# ----------------------------------------------------------------------------- public API


def read_ct_with_meta(path: str | Path, hu_offset: float = 0.0) -> tuple[sitk.Image, dict]:
    """Read a CT as float32 HU plus metadata (patient_id, modality, source_path, ...).

    Values must be Hounsfield units (air near -1000 must be present). ``hu_offset`` (e.g. -1024) is
    added to a CT stored as HU+1024 without its rescale; it is refused on data that already has air.
    """
    path = Path(path)
    if not math.isfinite(hu_offset):
        raise AxonInputError(None, f"--hu-offset must be a finite number (got {hu_offset})")
    refuse_special_path(path, "CT")
    if not path.exists():
        raise AxonInputError(path, "does not exist")
    meta: dict = {"source_path": str(path)}
    if path.is_dir() or _looks_like_dicom(path):
        if path.is_dir():
            where = path
            info = _choose_series(find_ct_series(path), where)
        else:
            ds = _read_header(path)
            if ds is None:
                raise AxonInputError(path, "is a DICOMDIR index, not an image; choose the folder instead")
            modality = str(ds.get("Modality", "") or "").upper()
            if modality != "CT":
                raise AxonInputError(
                    path, f"has modality {modality or 'unknown'}; AXON needs a CT volume (Modality CT)"
                )
            uid = str(ds.SeriesInstanceUID)
            where = path.parent
            matches = [s for s in find_ct_series(where) if s.series_uid == uid]
            info = matches[0]
        image, extra = _read_dicom_series(info, where)
        image = _as_3d_float(image, Path(info.folder))
        _check_geometry(image, Path(info.folder))
        image, notes = _check_values(image, Path(info.folder), hu_offset)
        warnings = extra["warnings"] + notes
        meta.update(
            format="dicom",
            patient_id=info.patient_id or Path(info.folder).name,
            modality=info.modality,
            series_uid=info.series_uid,
            series_description=info.description,
            series_folder=info.folder,
            n_slices=extra["n_slices"],
            warnings=warnings,
        )
    else:
        suf = _suffix(path)
        if suf in IMAGE_2D_SUFFIXES:
            raise AxonInputError(path, f"is a 2D image ({suf}); a CT volume needs at least {MIN_SLICES} slices")
        if suf not in VOLUME_SUFFIXES:
            raise AxonInputError(
                path,
                f"unsupported file type {suf or '(no extension)'}; use a DICOM folder or "
                + ", ".join(VOLUME_SUFFIXES),
            )
        check_not_truncated(path)  # ITK fills a short .nii.gz with zeros, without an error
        _check_detached_data(path)
        try:
            with _native_stderr_quiet():  # MetaIO prints its own line before ITK raises
                image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise AxonInputError(path, f"cannot be read as {suf} (corrupt or truncated file: {itk_reason(exc)})") from None
        image = _as_3d_float(image, path)
        if suf in (".nii", ".nii.gz"):
            bad = _nifti_nonfinite(path)
            if bad is not None:
                raise AxonInputError(path, f"contains {bad} values; cannot use it as a CT")
        _check_geometry(image, path)
        image, warnings = _check_values(image, path, hu_offset)
        meta.update(
            format=suf.lstrip("."), patient_id=_stem(path), modality="CT", n_slices=image.GetDepth(), warnings=warnings
        )
    meta.update(
        size=tuple(image.GetSize()),
        spacing_mm=tuple(image.GetSpacing()),
        origin_lps=tuple(image.GetOrigin()),
        direction=tuple(image.GetDirection()),
    )
    return image, meta


def read_ct(path: str | Path, hu_offset: float = 0.0) -> sitk.Image:
    """Read a CT volume (DICOM folder/file, NIfTI, NRRD, MHA/MHD) as a float32 HU image."""
    return read_ct_with_meta(path, hu_offset)[0]
