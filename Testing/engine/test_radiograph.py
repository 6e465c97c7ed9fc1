"""Reading real and synthetic radiographs (turning them into model views: test_transforms.py)."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from axonct.errors import AxonInputError
from axonct.io.radiograph import Radiograph, read_radiograph

RG1 = get_testdata_file("RG1_UNCR.dcm")


def regions(a: np.ndarray) -> dict[str, float]:
    """Mean of anatomical regions of RG1 (fractions of the image, checked by eye)."""
    h, w = a.shape

    def m(r0, r1, c0, c1):
        return float(a[int(r0 * h):int(r1 * h), int(c0 * w):int(c1 * w)].mean())

    lungs = (m(0.3, 0.45, 0.18, 0.32) + m(0.3, 0.45, 0.64, 0.78)) / 2
    mediastinum = m(0.3, 0.45, 0.46, 0.54)
    air = (m(0.03, 0.08, 0.0, 0.04) + m(0.03, 0.08, 0.96, 1.0)) / 2  # above the shoulders
    return {"lungs": lungs, "mediastinum": mediastinum, "air": air}


@pytest.fixture(scope="module")
def small_ds():
    """RG1 downsampled 8x (245 x 231) so the synthetic DICOMs stay fast."""
    ds = pydicom.dcmread(RG1)
    raw = np.ascontiguousarray(ds.pixel_array[::8, ::8]).astype(np.uint16)
    ds.PixelData = raw.tobytes()
    ds.Rows, ds.Columns = raw.shape
    return ds, raw


def write_dicom(small_ds, tmp_path, name, **attrs):
    ds = copy.deepcopy(small_ds[0])
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    path = tmp_path / name
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def grey(small_ds, tmp_path_factory):
    """A real radiograph stretched to the full [0, 1] range, for image-file round trips."""
    path = write_dicom(small_ds, tmp_path_factory.mktemp("grey"), "g.dcm")
    x = read_radiograph(path).pixels.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


# ------------------------------------------------------------------------------- real DICOM


def test_real_cr_is_frontal_inverted_and_without_spacing():
    rg = read_radiograph(RG1)
    assert isinstance(rg, Radiograph)
    assert rg.view == "frontal" and rg.view_position == "PA"
    assert rg.pixel_spacing_mm is None  # stored as 0
    assert rg.pixels.dtype == np.float32 and rg.pixels.shape == (1955, 1841)
    assert rg.pixels.min() >= 0.0 and rg.pixels.max() <= 1.0
    assert rg.meta["photometric"] == "MONOCHROME1" and rg.meta["inverted"] is True
    assert rg.meta["modality"] == "CR" and rg.meta["patient_id"] == "9RG1"

    r = regions(rg.pixels)
    assert r["lungs"] + 0.15 < r["mediastinum"]
    assert r["air"] + 0.15 < r["lungs"]

    # The stored MONOCHROME1 values run the other way: this is what proves the inversion.
    raw = regions(pydicom.dcmread(RG1).pixel_array.astype(np.float64))
    assert raw["lungs"] > raw["mediastinum"]
    assert raw["air"] > raw["lungs"]


def test_real_cr_given_as_lateral_is_refused():
    assert read_radiograph(RG1, view="frontal").view == "frontal"
    with pytest.raises(AxonInputError, match=r"RG1_UNCR\.dcm.*ViewPosition is PA \(frontal\).*lateral"):
        read_radiograph(RG1, view="lateral")


# -------------------------------------------------------------------------- synthetic DICOMs


def test_monochrome2_copy_is_not_inverted(small_ds, tmp_path):
    m1 = read_radiograph(write_dicom(small_ds, tmp_path, "m1.dcm")).pixels
    m2 = read_radiograph(write_dicom(small_ds, tmp_path, "m2.dcm", PhotometricInterpretation="MONOCHROME2"))
    assert m2.meta["inverted"] is False
    np.testing.assert_allclose(m2.pixels, 1.0 - m1, atol=1e-6)
    r = regions(m2.pixels)
    assert r["lungs"] > r["mediastinum"]


def test_lateral_view_position(small_ds, tmp_path):
    path = write_dicom(small_ds, tmp_path, "lat.dcm", ViewPosition="LL")
    rg = read_radiograph(path)
    assert rg.view == "lateral" and rg.view_position == "LL"
    assert read_radiograph(path, view="lateral").view == "lateral"
    with pytest.raises(AxonInputError) as err:
        read_radiograph(path, view="frontal")
    assert "lat.dcm" in str(err.value) and "LL" in str(err.value)
    assert "lateral" in err.value.problem and "frontal" in err.value.problem
    assert err.value.path == str(path)


def test_view_from_description_when_view_position_empty(small_ds, tmp_path):
    path = write_dicom(small_ds, tmp_path, "desc.dcm", ViewPosition="", SeriesDescription="CHEST LAT")
    assert read_radiograph(path).view == "lateral"
    # A free-text hint is weak: the caller's word wins.
    assert read_radiograph(path, view="frontal").view == "frontal"
    both = write_dicom(small_ds, tmp_path, "both.dcm", ViewPosition="", SeriesDescription="CHEST PA AND LAT")
    assert read_radiograph(both).view is None


def test_pixel_spacing_and_imager_pixel_spacing(small_ds, tmp_path):
    ps = read_radiograph(write_dicom(small_ds, tmp_path, "ps.dcm", PixelSpacing=[0.2, 0.25]))
    assert ps.pixel_spacing_mm == pytest.approx((0.2, 0.25))

    ips = read_radiograph(
        write_dicom(small_ds, tmp_path, "ips.dcm", PixelSpacing=None, ImagerPixelSpacing=[0.15, 0.15])
    )
    assert ips.pixel_spacing_mm == pytest.approx((0.15, 0.15))
    assert ips.meta["spacing_source"] == "ImagerPixelSpacing"

    mag = read_radiograph(write_dicom(
        small_ds, tmp_path, "mag.dcm", PixelSpacing=None, ImagerPixelSpacing=[0.15, 0.15],
        EstimatedRadiographicMagnificationFactor=1.5,
    ))
    assert mag.pixel_spacing_mm == pytest.approx((0.1, 0.1))


def test_window_center_width_is_applied(small_ds, tmp_path):
    raw = small_ds[1].astype(np.float64)
    lo, hi = np.percentile(raw, [30, 70])
    path = write_dicom(small_ds, tmp_path, "win.dcm", WindowCenter=float((lo + hi) / 2),
                       WindowWidth=float(hi - lo))
    px = read_radiograph(path).pixels
    below, above = raw < lo - 1, raw > hi + 1
    # MONOCHROME1: below the window is white on the film's inverse, i.e. 1 here.
    assert np.all(px[below] == 1.0) and np.all(px[above] == 0.0)
    inside = (raw > lo + 1) & (raw < hi - 1)
    assert np.all((px[inside] > 0.0) & (px[inside] < 1.0))
    # Linear inside the window.
    expected = 1.0 - (raw[inside] - lo) / (hi - lo)
    np.testing.assert_allclose(px[inside], expected, atol=2e-3)


def test_rescale_slope_intercept_is_applied(small_ds, tmp_path):
    mono2 = dict(PhotometricInterpretation="MONOCHROME2", WindowCenter=None, WindowWidth=None)
    plain = read_radiograph(write_dicom(small_ds, tmp_path, "plain.dcm", **mono2)).pixels
    flipped = read_radiograph(write_dicom(
        small_ds, tmp_path, "neg.dcm", RescaleSlope=-1.0, RescaleIntercept=40000.0, **mono2
    )).pixels
    np.testing.assert_allclose(flipped, 1.0 - plain, atol=1e-6)

    # A window given in rescaled units must select the same tissue as on the raw values.
    raw = small_ds[1].astype(np.float64)
    lo, hi = np.percentile(raw, [20, 80])
    c, w = (lo + hi) / 2, hi - lo
    a = read_radiograph(write_dicom(small_ds, tmp_path, "w1.dcm", WindowCenter=c, WindowWidth=w)).pixels
    b = read_radiograph(write_dicom(
        small_ds, tmp_path, "w2.dcm", RescaleSlope=2.0, RescaleIntercept=-1000.0,
        WindowCenter=2 * c - 1000.0, WindowWidth=2 * w,
    )).pixels
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_patient_orientation_flips_to_radiological_display(small_ds, tmp_path):
    ref = read_radiograph(write_dicom(small_ds, tmp_path, "lf.dcm")).pixels
    rg = read_radiograph(write_dicom(small_ds, tmp_path, "rf.dcm", PatientOrientation=["R", "F"]))
    np.testing.assert_array_equal(rg.pixels, ref[:, ::-1])
    assert rg.meta["reoriented"] == ["flip_left_right"]


def test_multiframe_dicom_is_refused(small_ds, tmp_path):
    raw = small_ds[1]
    path = write_dicom(small_ds, tmp_path, "multi.dcm", NumberOfFrames=2,
                       PixelData=np.concatenate([raw, raw]).tobytes())
    with pytest.raises(AxonInputError, match=r"multi\.dcm.*2 frames"):
        read_radiograph(path)


def test_ct_dicom_is_refused():
    ct = get_testdata_file("CT_small.dcm")
    with pytest.raises(AxonInputError, match=r"CT_small\.dcm.*CT image \(Modality CT\), not a radiograph"):
        read_radiograph(ct)


# ------------------------------------------------------------------------------ image files


def test_png8_png16_tiff16_round_trip(grey, tmp_path):
    Image.fromarray(np.round(grey * 255).astype(np.uint8)).save(tmp_path / "g8.png")
    Image.fromarray(np.round(grey * 65535).astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.round(grey * 65535).astype(np.uint16)).save(tmp_path / "g16.tif")
    p8 = read_radiograph(tmp_path / "g8.png", view="frontal")
    p16 = read_radiograph(tmp_path / "g16.png")
    t16 = read_radiograph(tmp_path / "g16.tif")
    assert p8.view == "frontal" and p16.view is None and p8.pixel_spacing_mm is None
    assert p16.meta["bits"] == 16 and p8.meta["bits"] == 8
    np.testing.assert_allclose(p8.pixels, grey, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(p16.pixels, grey, atol=1e-4)
    np.testing.assert_allclose(t16.pixels, grey, atol=1e-4)
    inv = read_radiograph(tmp_path / "g16.png", invert=True)
    np.testing.assert_allclose(inv.pixels, 1.0 - grey, atol=1e-4)


def test_grey_rgb_jpeg_is_accepted_colour_jpeg_is_refused(grey, tmp_path):
    u8 = np.round(grey * 255).astype(np.uint8)
    Image.fromarray(u8).convert("RGB").save(tmp_path / "grey.jpg", quality=90)
    rg = read_radiograph(tmp_path / "grey.jpg")
    assert rg.pixels.shape == grey.shape
    assert np.abs(rg.pixels - grey).mean() < 0.03

    colour = np.stack([u8, 255 - u8, np.full_like(u8, 128)], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.jpg", quality=90)
    with pytest.raises(AxonInputError, match=r"colour\.jpg.*colour .*greyscale"):
        read_radiograph(tmp_path / "colour.jpg")


def test_tinted_grey_is_read_along_its_tint_but_overlays_and_colour_maps_are_refused(grey, tmp_path):
    """A film printed with a colour cast (a journal figure) keeps its grey scale; real colour does not."""
    from axonct.io.radiograph import TINT_NOTE

    tint = np.stack([0.75 * grey + 0.05, 0.9 * grey + 0.08, 0.95 * grey + 0.05], axis=-1)
    Image.fromarray(np.round(tint * 255).astype(np.uint8)).save(tmp_path / "tinted.png")
    rg = read_radiograph(tmp_path / "tinted.png")
    assert TINT_NOTE in rg.meta["input_notes"]
    assert np.corrcoef(rg.pixels.ravel(), grey.ravel())[0, 1] > 0.999
    assert np.abs(rg.pixels - grey).mean() < 0.02  # rescaled to [0, 1] like any grey file

    Image.fromarray(np.round(tint[..., ::-1] * 255).astype(np.uint8)).save(tmp_path / "tinted.tif")
    assert TINT_NOTE in read_radiograph(tmp_path / "tinted.tif").meta["input_notes"]

    overlay = np.round(tint * 255).astype(np.uint8)
    rows, cols = grey.shape
    overlay[: rows // 3, : cols // 3] = [255, 0, 0]  # a red box drawn over a ninth of the film
    Image.fromarray(overlay).save(tmp_path / "overlay.png")
    with pytest.raises(AxonInputError, match=r"overlay\.png.*colour .*greyscale"):
        read_radiograph(tmp_path / "overlay.png")


def test_bad_files_are_refused_naming_the_file(tmp_path, grey):
    with pytest.raises(AxonInputError, match=r"missing\.png.*does not exist"):
        read_radiograph(tmp_path / "missing.png")

    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AxonInputError, match=r"garbage\.dcm"):
        read_radiograph(garbage)

    good = tmp_path / "good.png"
    Image.fromarray(np.round(grey * 255).astype(np.uint8)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:200])
    with pytest.raises(AxonInputError, match=r"broken\.png"):
        read_radiograph(broken)

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(AxonInputError, match=r"notes\.txt.*unsupported file type"):
        read_radiograph(notes)


def test_blank_image_is_refused(tmp_path, small_ds):
    Image.fromarray(np.full((64, 64), 77, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(AxonInputError, match=r"blank\.png.*blank"):
        read_radiograph(tmp_path / "blank.png")
    flat = np.full_like(small_ds[1], 1000)
    path = write_dicom(small_ds, tmp_path, "blank.dcm", PixelData=flat.tobytes())
    with pytest.raises(AxonInputError, match=r"blank\.dcm.*blank"):
        read_radiograph(path)


def test_volume_file_is_refused(tmp_path):
    import SimpleITK as sitk

    vol = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 16, 16)).astype(np.float32))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(vol, str(path))
    with pytest.raises(AxonInputError, match=r"ct\.nii\.gz.*is a 3-D volume.*not a radiograph"):
        read_radiograph(path)


def test_itk_radiograph_spacing_is_kept_but_a_default_1mm_is_unknown(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 50)).astype(np.float32))
    img.SetSpacing((0.2, 0.3))
    sitk.WriteImage(img, str(tmp_path / "measured.nrrd"))
    rg = read_radiograph(tmp_path / "measured.nrrd")
    assert rg.pixel_spacing_mm == pytest.approx((0.3, 0.2)) and rg.meta["spacing_source"] == "image header"
    img.SetSpacing((1.0, 1.0))  # what a PNG carries once it is a volume (e.g. in Slicer)
    sitk.WriteImage(img, str(tmp_path / "default.nrrd"))
    rg = read_radiograph(tmp_path / "default.nrrd")
    assert rg.pixel_spacing_mm is None and "default" in rg.meta["spacing_note"]


def test_unusable_spacing_and_a_placeholder_age_are_noted_not_dropped_silently(small_ds, tmp_path):
    path = write_dicom(small_ds, tmp_path, "placeholders.dcm", PatientAge="000Y", PixelSpacing=[0, 0],
                       ImagerPixelSpacing=[-0.1, -0.1])
    rg = read_radiograph(path)
    assert rg.pixel_spacing_mm is None and rg.meta["patient_age_years"] is None  # not sized as a newborn
    notes = " | ".join(rg.meta["input_notes"])
    assert "PatientAge 000Y is a placeholder" in notes
    assert "PixelSpacing (0 x 0 mm) is unusable" in notes and "ImagerPixelSpacing (-0.1 x -0.1 mm)" in notes
    child = read_radiograph(write_dicom(small_ds, tmp_path, "child.dcm", PatientAge="006Y"))
    assert child.meta["patient_age_years"] == 6 and not any("PatientAge" in n for n in child.meta["input_notes"])
