"""Reading CTs: real data, LIDC-style DICOM trees and every kind of bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from axonct.io.ct import MIN_SLICES, find_ct_series, read_ct, read_ct_with_meta
from axonct.errors import AxonInputError

VALUE_STEP = 10  # raw value added per slice (by position), so slice order is visible in the pixels


@pytest.fixture(scope="module")
def ct_small():
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def write_series(
    ct_small, folder: Path, positions, modality="CT", patient_id="LIDC-IDRI-0001", name="1-{:03d}.dcm", shear=0.0
):
    """Write one slice per z position, files named in an order unrelated to position."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    base = ct_small.pixel_array.astype(np.int16)
    x0, y0, _ = (float(v) for v in ct_small.ImagePositionPatient)
    rank = np.argsort(np.argsort(positions))  # 0 for the lowest z
    order = np.random.default_rng(0).permutation(len(positions))
    paths = []
    for k, i in enumerate(order):
        ds = copy.deepcopy(ct_small)
        ds.ImagePositionPatient = [x0, y0 + shear * float(positions[i]), float(positions[i])]
        ds.InstanceNumber = int(len(positions) - i)
        sop = generate_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SeriesInstanceUID = uid
        ds.Modality = modality
        ds.PatientID = patient_id
        ds.PixelData = (base + VALUE_STEP * int(rank[i])).astype(np.int16).tobytes()
        p = folder / name.format(k + 1)
        ds.save_as(p)
        paths.append(p)
    return paths


def test_real_ct_reads_with_spacing_and_hu(real_ct_path):
    image, meta = read_ct_with_meta(real_ct_path)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == (512, 512, 133)
    np.testing.assert_allclose(image.GetSpacing(), (0.703125, 0.703125, 2.5), atol=1e-4)
    assert meta["modality"] == "CT" and meta["patient_id"] == "cxr"
    a = sitk.GetArrayViewFromImage(image)

    def peak(lo, hi):
        hist, edges = np.histogram(a, bins=int((hi - lo) / 10), range=(lo, hi))
        return edges[np.argmax(hist)] + 5

    assert -1060 < peak(-1200, -600) < -940  # air
    assert -140 < peak(-200, -30) < -60  # fat
    assert 0 < peak(-30, 300) < 100  # soft tissue / blood
    assert a.max() > 1000  # bone, plus contrast


def test_lidc_nested_tree_picks_ct_series(ct_small, tmp_path):
    study = tmp_path / "LIDC-IDRI-0001" / "01-01-2000-30178"
    ct_dir = study / "3000566.000000-03192"
    positions = [-100.0 + 2.5 * i for i in range(10)]
    ct_files = write_series(ct_small, ct_dir, positions)
    (ct_dir / "069.xml").write_text("<LidcReadMessage/>")  # LIDC annotations sit next to slices
    # a sibling series with more files but the wrong modality must not win
    write_series(ct_small, study / "3000923.000000-62357", [float(i) for i in range(12)], modality="CR")

    series = find_ct_series(tmp_path)
    assert [s.modality for s in series] == ["CT", "CR"]
    assert series[0].n_files == 10 and Path(series[0].folder) == ct_dir
    assert series[0].patient_id == "LIDC-IDRI-0001"

    image, meta = read_ct_with_meta(tmp_path)
    assert image.GetSize() == (128, 128, 10)
    np.testing.assert_allclose(image.GetSpacing()[2], 2.5, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing()[:2], [float(v) for v in ct_small.PixelSpacing], atol=1e-6)
    assert image.GetOrigin()[2] == pytest.approx(-100.0)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-9)
    a = sitk.GetArrayFromImage(image)
    hu0 = ct_small.pixel_array.astype(np.float32) + float(ct_small.RescaleIntercept)
    for k in range(10):  # slice k (by position) is slice 0 + k * step: rescale applied, order right
        np.testing.assert_allclose(a[k], hu0 + VALUE_STEP * k)
    assert meta["patient_id"] == "LIDC-IDRI-0001" and meta["modality"] == "CT"

    # one file of the series stands for the whole series
    again = read_ct(ct_files[3])
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(again), a)


def test_slice_gap_rule(ct_small, tmp_path):
    # small jitter passes and the spacing is the mean gap
    jitter = [2.5 * i + (0.05 if i % 2 else 0.0) for i in range(9)] + [2.5 * 9]
    img = read_ct(write_series(ct_small, tmp_path / "jitter", jitter)[0].parent)
    assert img.GetSpacing()[2] == pytest.approx(2.5, abs=1e-6)
    # one missing slice: the gap doubles -> refused
    missing = [2.5 * i for i in range(12) if i != 6]
    folder = write_series(ct_small, tmp_path / "missing", missing)[0].parent
    with pytest.raises(AxonInputError, match="irregular slice spacing") as err:
        read_ct(folder)
    assert "missing" in str(err.value)


def test_gantry_tilt_refused(ct_small, tmp_path):
    folder = write_series(ct_small, tmp_path / "tilted", [2.5 * i for i in range(10)], shear=0.2)[0].parent
    with pytest.raises(AxonInputError, match="gantry tilt") as err:
        read_ct(folder)
    assert "tilted" in str(err.value)


def _nifti(tmp_path, name, array, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing[: img.GetDimension()])
    p = tmp_path / name
    sitk.WriteImage(img, str(p))
    return p


def _phantom(shape=(12, 32, 32)):
    a = np.full(shape, -1000.0, np.float32)
    a[:, 8:24, 8:24] = 40.0
    return a


def test_corrupt_dicom_is_named(ct_small, tmp_path):
    folder = tmp_path / "series"
    write_series(ct_small, folder, [2.5 * i for i in range(10)])
    (folder / "IM0005_broken.dcm").write_bytes(b"this is not dicom " * 40)
    with pytest.raises(AxonInputError, match="cannot be read as DICOM") as err:
        read_ct(folder)
    assert "IM0005_broken.dcm" in str(err.value)


def test_truncated_dicom_is_named(ct_small, tmp_path):
    folder = tmp_path / "series"
    files = write_series(ct_small, folder, [2.5 * i for i in range(10)])
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) - 20000])  # header intact, pixel data cut short
    with pytest.raises(AxonInputError, match="cannot be read as DICOM") as err:
        read_ct(folder)
    assert files[4].name in str(err.value)


def test_empty_folder(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(AxonInputError, match="no DICOM files found") as err:
        read_ct(empty)
    assert "nothing_here" in str(err.value)


def test_mr_series_refused(ct_small, tmp_path):
    folder = tmp_path / "brain_mr"
    write_series(ct_small, folder, [2.5 * i for i in range(10)], modality="MR")
    with pytest.raises(AxonInputError, match="no CT series") as err:
        read_ct(folder)
    assert "brain_mr" in str(err.value) and "MR" in str(err.value)
    with pytest.raises(AxonInputError, match="modality MR"):
        read_ct(next(folder.iterdir()))


@pytest.mark.parametrize("kind", ["dicom_single_slice", "nifti_2d", "nifti_one_slice", "png"])
def test_2d_image_refused(ct_small, tmp_path, kind):
    if kind == "dicom_single_slice":
        path = write_series(ct_small, tmp_path / "one", [0.0], name="slice_only_{:03d}.dcm")[0]
    elif kind == "nifti_2d":
        path = _nifti(tmp_path, "flat2d.nii.gz", _phantom()[0])
    elif kind == "nifti_one_slice":
        path = _nifti(tmp_path, "flat3d.nii.gz", _phantom()[:1])
    else:
        path = tmp_path / "chest.png"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.uint8)), str(path))
    with pytest.raises(AxonInputError, match=f"is a 2D image.*at least {MIN_SLICES} slices") as err:
        read_ct(path)
    assert path.name in str(err.value)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("bad,phrase", [(np.nan, "contains NaN values"), (np.inf, "contains infinite values")])
def test_nonfinite_volume_refused(tmp_path, suffix, bad, phrase):
    """ITK's NIfTI reader silently turns NaN into 0, so this also checks the raw-voxel scan."""
    a = _phantom()
    a[5, 10, 10] = bad
    path = _nifti(tmp_path, "has_nan" + suffix, a)
    with pytest.raises(AxonInputError, match=phrase) as err:
        read_ct(path)
    assert path.name in str(err.value)


def test_nonexistent_path(tmp_path):
    with pytest.raises(AxonInputError, match="does not exist") as err:
        read_ct(tmp_path / "no_such_scan")
    assert "no_such_scan" in str(err.value)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.txt"
    path.write_text("1 2 3")
    with pytest.raises(AxonInputError, match="unsupported file type") as err:
        read_ct(path)
    assert "scan.txt" in str(err.value)


@pytest.mark.parametrize("values", ["zeros", "unit_range", "all_air"])
def test_not_hounsfield_refused(tmp_path, values):
    a = _phantom()
    a = {"zeros": np.zeros_like(a), "unit_range": (a + 1000) / 1040, "all_air": np.full_like(a, -1000.0)}[values]
    path = _nifti(tmp_path, f"{values}.nii.gz", a.astype(np.float32))
    with pytest.raises(AxonInputError, match="does not look like a CT in Hounsfield units") as err:
        read_ct(path)
    assert path.name in str(err.value)


def test_volume_formats_keep_geometry(tmp_path):
    a = _phantom()
    img = sitk.GetImageFromArray(a.astype(np.int16))
    img.SetSpacing((0.8, 0.9, 2.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    for name in ("v.nii.gz", "v.nrrd", "v.mha", "v.mhd"):
        sitk.WriteImage(img, str(tmp_path / name))
        out, meta = read_ct_with_meta(tmp_path / name)
        assert out.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_allclose(out.GetSpacing(), img.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(out.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(out.GetDirection(), img.GetDirection(), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), a)
        assert meta["patient_id"] == "v"
