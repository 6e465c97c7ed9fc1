"""Write HU volumes with their physical geometry: NRRD, NIfTI, or a DICOM CT series folder.

Every format is written under a temporary name and renamed when complete. The DICOM series carries
a research-use series description and derived-image flags so it is never mistaken for an acquired CT.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from axonct.errors import AxonInputError, disk_full_error, itk_reason

FORMATS = {".nrrd": "nrrd", ".nhdr": "nrrd", ".nii": "nifti", ".nii.gz": "nifti", ".mha": "mha"}


def output_format(path: str | Path) -> str:
    if not str(path).strip() or Path(str(path).rstrip("/")).name in ("", ".", ".."):
        raise AxonInputError(path if str(path).strip() else None,
                             f"--out {str(path)!r} names no output: give a file (.nrrd, .nii, .nii.gz, .mha) or a "
                             "new folder name for a DICOM series")
    name = str(path).lower()
    for suffix, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    if Path(path).suffix == "" or name.endswith("/"):
        return "dicom"
    raise AxonInputError(path, "unsupported output format; use .nrrd, .nii, .nii.gz, .mha, "
                               "or a folder name (no extension) for a DICOM series")


def sibling(path: str | Path, tag: str) -> Path:
    """`out.nrrd` -> `out_<tag>.nrrd`; `out_dicom/` -> `out_dicom_<tag>/`."""
    path = Path(path)
    name = path.name
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + f"_{tag}" + name[-len(suffix):])
    return path.with_name(f"{name}_{tag}")


def report_name(path: str | Path) -> Path:
    """`scan.v2.nrrd` -> `scan.v2_report.json`; `out_dicom/` -> `out_dicom_report.json` (the whole name
    up to the volume extension, so `scan.v1` and `scan.v2` runs never share a report)."""
    path = Path(path)
    name = path.name
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}_report.json")


def dicom_slice_names(n_slices: int) -> list[str]:
    return [f"slice_{k + 1:04d}.dcm" for k in range(n_slices)]


def plan_volume(outputs, path: str | Path, n_slices: int) -> None:
    """Register the file(s) `write_volume` will write at ``path`` with an `output_policy.Outputs`."""
    path = Path(path)
    if output_format(path) != "dicom":
        outputs.file(path)
        return
    outputs.folder(path)
    if path.is_dir():
        from axonct.io.output_policy import written_by_axon

        foreign = [p.name for p in sorted(path.glob("*.dcm")) if written_by_axon(p) is None]
        if foreign:
            raise AxonInputError(path, f"holds DICOM files AXON did not write (e.g. {foreign[0]}); a DICOM series "
                                       "needs a folder of its own: choose another --out")
    for name in dicom_slice_names(n_slices):
        outputs.file(path / name)
    outputs.retire(path, "slice_*.dcm")  # with --overwrite: surplus slices of an older AXON series


def write_volume(image: sitk.Image, path: str | Path, description: str = "AXON reconstruction",
                 outputs=None) -> Path:
    """Write ``image`` at ``path`` (format from the name). With ``outputs`` (an `output_policy.Outputs`)
    the file(s) are staged there and appear when the caller's run commits; without, they are committed
    now, under the same policy with --overwrite (an earlier AXON output may be replaced, nothing else)."""
    from axonct.io.output_policy import Outputs

    path = Path(path)
    fmt = output_format(path)
    if outputs is None:
        with Outputs("export", overwrite=True) as own:
            plan_volume(own, path, image.GetSize()[2] if image.GetDimension() == 3 else 1)
            return write_volume(image, path, description, own)
    if fmt == "dicom":
        write_dicom_series(image, path, description, outputs)
    else:
        write_itk(image, outputs.path(path))
    return path


def write_itk(image: sitk.Image, path: str | Path) -> None:
    """``sitk.WriteImage`` whose failures say why in one line. ITK reports a full disk as a
    RuntimeError of many lines; it becomes the OSError it is (ENOSPC), anything else an input error."""
    path = Path(path)
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as exc:
        full = disk_full_error(exc, path)
        if full is not None:
            raise full from None
        raise AxonInputError(path, f"could not be written ({itk_reason(exc)})") from None


def write_dicom_series(image: sitk.Image, folder: str | Path, description: str, outputs) -> Path:
    """One CT Image Storage file per axial slice, int16 with rescale slope 1 and intercept -1024,
    staged with ``outputs`` (an `output_policy.Outputs`) beside whatever the folder already holds."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction, np.eye(3), atol=1e-6):
        raise AxonInputError(folder, "the DICOM writer expects an axial (identity direction) volume")
    hu = sitk.GetArrayFromImage(image).astype(np.float32)  # [z, y, x]
    stored = np.clip(np.round(hu + 1024.0), 0, 4095).astype(np.int16)
    sx, sy, sz = image.GetSpacing()
    ox, oy, oz = image.GetOrigin()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime.now()
    names = dicom_slice_names(stored.shape[0])
    for k in range(stored.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SeriesDescription = f"{description} (research use, not for diagnosis)"[:64]
        ds.PatientName, ds.PatientID = "AXON^Reconstruction", "AXON"
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [float(ox), float(oy), float(oz + k * sz)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(sz)
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = stored[k].tobytes()
        ds.save_as(outputs.path(folder / names[k]), enforce_file_format=True)
    return folder
