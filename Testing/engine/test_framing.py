"""Framing puts a radiograph's lung fields where the training geometry puts them, and turns the
patient's size into the output's voxel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from axonct.io.radiograph import Radiograph, patient_age_years
from axonct.models.lung_fields import load_lung_field_segmenter, project_lung_fields
from axonct.physics.drr import drr_from_unit_volume
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
from axonct.pipeline import framing as fr


def _bundled_geometry():
    """The shipped weights' own grid and geometry: the lung-field network and the training box were
    made in it (the preset may have moved on to weights still training)."""
    from axonct.models.lung_fields import bundled_weights_dir
    from axonct.pipeline.checkpoint import read_card
    from axonct.presets import ModelPreset

    return ModelPreset.from_dict(read_card(bundled_weights_dir(), "coarse")["config"]).data


DATA = _bundled_geometry()


def _reference(data):
    """The sample CT in its training pose in ``data``'s geometry: realistic DRRs and their exact lung fields."""
    from axonct.data.synthetic_anatomy import SyntheticChestGenerator

    gen = SyntheticChestGenerator(data)
    chest = gen.reference()
    lungs = np.isin(chest.labels, [i for n, (i, _) in gen.structures.items() if n.startswith("lung_")])
    with torch.no_grad():
        drr = drr_from_unit_volume(torch.from_numpy(chest.unit), data.grid, data.geometry, data.views)
    image = simulate_radiograph(drr, RealismConfig.mild(), seed=0).numpy()
    return image, np.asarray(project_lung_fields(lungs, data))


@pytest.fixture(scope="module")
def reference():
    """The sample CT in its training pose in the shipped weights' geometry."""
    return _reference(DATA)


@pytest.fixture(scope="module")
def segmenter():
    seg = load_lung_field_segmenter(None)
    assert seg is not None, "the bundled weights must include the lung-field network"
    return seg


def _place(view: np.ndarray, scale: float, top: float, left: float, shape: tuple[int, int]) -> np.ndarray:
    """An image of ``shape`` in which the view's pixel edge (0, 0) lands at (top, left) and each view
    pixel spans ``scale`` image pixels; dark (air) elsewhere, like a detector larger than the chest."""
    h, w = shape
    rows = (np.arange(h) + 0.5 - top) / scale  # view coordinates (edges) of image pixel centres
    cols = (np.arange(w) + 0.5 - left) / scale
    n = view.shape[-1]
    gy = torch.from_numpy(2 * rows / n - 1).float()
    gx = torch.from_numpy(2 * cols / n - 1).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]
    out = F.grid_sample(torch.from_numpy(view)[None, None].float(), grid, align_corners=False, padding_mode="zeros")
    return out[0, 0].numpy()


@pytest.mark.parametrize("preset", ["cpu", "cpu-wide"])
def test_training_frame_constants_match_the_sample_ct(preset):
    """Each geometry's training box is where the sample CT's lungs project in it (the two presets
    cover every measured geometry)."""
    from axonct.config import data_preset

    data = data_preset(preset)
    keys = {(d.geometry.source_to_isocenter_mm, d.geometry.source_to_detector_mm)
            for d in map(data_preset, ("cpu", "cpu-wide"))}
    assert keys == set(fr.TRAINING_BOXES)
    _, fields = _reference(data)
    frame = fr.training_frame(data, fields.shape[-1])
    px = 2.0  # pixels
    top, left, bottom, right = fr.lung_bbox(fields[0].astype(np.float32))
    assert right - left == pytest.approx(frame.frontal_width, abs=px)
    assert (left + right) / 2 == pytest.approx(frame.frontal_center_col, abs=1.5)
    assert bottom == pytest.approx(frame.frontal_bottom_row, abs=px)
    top_l, left, bottom_l, right = fr.lung_bbox(fields[1].astype(np.float32))
    assert (left + right) / 2 == pytest.approx(frame.lateral_center_col, abs=1.5)
    assert bottom_l == pytest.approx(frame.lateral_bottom_row, abs=px)
    assert (bottom_l - top_l) / (bottom - top) == pytest.approx(frame.lateral_height_ratio, abs=0.01)


@pytest.mark.parametrize("scale,top,left", [(2.5, 40.0, 10.0), (1.6, -5.0, 70.0)])
def test_framing_recovers_a_known_scale_and_shift(reference, segmenter, scale, top, left):
    image, _ = reference
    placed = _place(image[0], scale, top, left, (380, 420))
    views, mask, framing, = fr.frame_inputs(Radiograph(placed, view="frontal"), None, DATA, segmenter)
    f = framing.views["frontal"]
    assert f.method == "lung-fields"
    assert f.image_px_per_view_px == pytest.approx(scale, rel=0.08)
    n = DATA.geometry.detector_pixels
    center = (top + n / 2 * scale, left + n / 2 * scale)
    # rows: within 5 view pixels; both lung-field networks find the lowest lung edge 1-3 pixels above
    # the exact lung fields the training box is measured on (the box sits 2.5-3.5 pixels high with the
    # one-patient network, 2.5-4.6 with the three-patient one on these placements)
    assert abs(f.center_rc[0] - center[0]) < 5 * scale and abs(f.center_rc[1] - center[1]) < 3 * scale
    # the framed view is the original view again (where the placed image covered it)
    corr = np.corrcoef(views[0][8:-8, 8:-8].ravel(), image[0][8:-8, 8:-8].ravel())[0, 1]
    assert corr > 0.9
    assert mask.tolist() == [1.0, 0.0] and framing.size_factor == 1.0  # no spacing, no age: an adult


def test_a_trusted_pixel_spacing_frames_physically(reference, segmenter):
    """PixelSpacing (patient plane) or a detector spacing with its source distances: the view is
    centred at the training geometry's mm per pixel and the patient keeps their own size."""
    image, _ = reference
    scale = 2.0
    placed = _place(image[0], scale, 20.0, 20.0, (300, 300))
    iso_mm = DATA.geometry.detector_size_mm / DATA.geometry.detector_pixels / DATA.geometry.magnification
    for spacing in (iso_mm / scale, 0.6 * iso_mm / scale):  # an adult, and a child's smaller chest
        rg = Radiograph(placed, pixel_spacing_mm=(spacing,) * 2, view="frontal", meta={"spacing_source": "PixelSpacing"})
        _, _, framing = fr.frame_inputs(rg, None, DATA, segmenter)
        f = framing.views["frontal"]
        assert f.method == "pixel-spacing" and f.center_rc == (150.0, 150.0)
        assert f.image_px_per_view_px == pytest.approx(iso_mm / spacing)
        assert framing.size_factor == 1.0 and "physically" in framing.size_source and not framing.warnings
    detector = Radiograph(placed, pixel_spacing_mm=(iso_mm * 1.5 / scale,) * 2, view="frontal",
                          meta={"spacing_source": "ImagerPixelSpacing", "distance_source_to_detector_mm": 1500.0,
                                "distance_source_to_patient_mm": 1000.0})
    _, _, framing = fr.frame_inputs(detector, None, DATA, segmenter)
    assert framing.views["frontal"].method == "pixel-spacing"
    assert framing.views["frontal"].image_px_per_view_px == pytest.approx(scale)


def test_an_assumed_magnification_frames_by_the_lung_fields_and_measures_the_size(reference, segmenter):
    """A detector spacing without distances is not trusted for framing (the magnification is a
    guess) but still measures the patient's size."""
    image, _ = reference
    scale = 2.0
    placed = _place(image[0], scale, 20.0, 20.0, (300, 300))
    iso_mm = DATA.geometry.detector_size_mm / DATA.geometry.detector_pixels / DATA.geometry.magnification
    for factor in (1.0, 0.6):
        spacing = factor * iso_mm / scale * fr.ASSUMED_PA_MAGNIFICATION  # on the detector
        rg = Radiograph(placed, pixel_spacing_mm=(spacing,) * 2, view="frontal",
                        meta={"spacing_source": "ImagerPixelSpacing"})
        assert not fr.trusted_spacing(rg)
        _, _, framing = fr.frame_inputs(rg, None, DATA, segmenter)
        assert framing.views["frontal"].method == "lung-fields" and "measured" in framing.size_source
        assert framing.size_factor == pytest.approx(factor, rel=0.08)


def test_model_geometry_views_pass_through_framing_unchanged(reference, segmenter):
    """DRRs in the model's own geometry (the demo, the evaluations, `axon drr` files) reach the
    networks exactly as rendered: what is measured on them is what `--framing none` would give."""
    image, _ = reference
    frontal, lateral = fr.model_view_radiographs(image, np.ones(2), DATA)
    views, mask, framing = fr.frame_inputs(frontal, lateral, DATA, segmenter)
    plain, _, unframed = fr.frame_inputs(frontal, lateral, DATA, segmenter, mode="none")
    assert [v.method for v in framing.views.values()] == ["pixel-spacing", "pixel-spacing"]
    assert framing.size_factor == 1.0 and not framing.warnings
    np.testing.assert_array_equal(views, plain)
    assert np.abs(views - np.clip(image, 0, 1)).max() < 0.02
    assert framing.pinned() == unframed.pinned() == (True, True)  # consistency pins their geometry


def test_only_whole_views_in_the_model_geometry_are_pinned(reference, segmenter, tmp_path):
    """An `axon drr` file read back is in the model's geometry; a crop of it, or a film at other
    distances, is not, so its calibration keeps fitting scale and position."""
    from axonct.io.radiograph import read_radiograph
    from axonct.physics.geometry import view_geometry
    from axonct.tools.drr_export import view_image, write_image

    image, _ = reference
    geom = view_geometry("frontal", DATA.geometry)
    write_image(view_image(image[0], geom.pixel_spacing_mm, {"axon_view": "frontal", "axon_geometry": geom.to_dict()}),
                tmp_path / "frontal.nrrd")
    rg = read_radiograph(tmp_path / "frontal.nrrd", view="frontal")
    assert fr.in_model_geometry(rg, DATA)
    assert fr.frame_inputs(rg, None, DATA, segmenter)[2].pinned() == (True, False)
    crop = Radiograph(rg.pixels[4:-4, 4:-4], pixel_spacing_mm=rg.pixel_spacing_mm, view="frontal", meta=dict(rg.meta))
    other = Radiograph(rg.pixels, pixel_spacing_mm=rg.pixel_spacing_mm, view="frontal",
                       meta=dict(rg.meta, distance_source_to_patient_mm=DATA.geometry.source_to_isocenter_mm - 100))
    for film in (crop, other):
        assert not fr.in_model_geometry(film, DATA)
        assert fr.frame_inputs(film, None, DATA, segmenter)[2].pinned() == (False, False)


def test_age_or_a_given_width_sets_the_size_without_spacing(reference, segmenter):
    image, _ = reference
    placed = _place(image[0], 2.0, 20.0, 20.0, (300, 300))
    _, _, framing = fr.frame_inputs(Radiograph(placed, view="frontal", meta={"patient_age_years": 6.0}), None,
                                    DATA, segmenter)
    assert framing.size_factor == pytest.approx(fr.age_width_fraction(6.0), rel=1e-6) and "age" in framing.size_source
    _, _, framing = fr.frame_inputs(Radiograph(placed, view="frontal"), None, DATA, segmenter, thorax_width_mm=200.0)
    assert framing.thorax_width_mm == 200.0 and framing.size_factor == pytest.approx(200 / fr.training_lung_width_mm(DATA))


def test_no_lungs_falls_back_and_says_so(segmenter):
    flat = np.random.default_rng(0).normal(0.5, 0.01, (200, 300)).astype(np.float32)
    views, _, framing = fr.frame_inputs(Radiograph(flat, view="frontal"), None, DATA, segmenter)
    assert framing.views["frontal"].method == "whole-image" and framing.warnings
    assert framing.size_factor == 1.0 and views.shape == (2, 128, 128)
    views2, _, framing2 = fr.frame_inputs(Radiograph(flat, view="frontal"), None, DATA, segmenter, mode="none")
    assert framing2.views["frontal"].method == "whole-image" and not framing2.warnings


def test_a_negative_radiograph_is_flagged_and_a_right_way_round_one_is_not(reference, segmenter):
    """The real CR and its negative; then rates on 10 clinical-looking synthetic chests of the sample
    CT (no right-way-round image flagged; some negatives still look like two lungs to the network)."""
    from axonct.data.synthetic_anatomy import SyntheticChestGenerator
    from axonct.io.radiograph import read_radiograph
    from axonct.io.sample_data import sample_cr_path

    cr = read_radiograph(sample_cr_path(), view="frontal").pixels.astype(np.float32)
    negative = cr.max() - cr
    assert not fr.looks_inverted(cr, segmenter) and fr.looks_inverted(negative, segmenter)
    gen = SyntheticChestGenerator(DATA)
    chests = [reference[0][0]] + [
        simulate_radiograph(torch.from_numpy(gen.generate(seed).render_drr()), RealismConfig.clinical(),
                            seed=seed).numpy()[0] for seed in range(1000, 1009)]
    assert not any(fr.looks_inverted(image, segmenter) for image in chests)
    # at least half: 7 of 10 with the one-patient network, 5 with the three-patient one, whose rates
    # on the chests of all training patients (26 of 31) and on held-out real frontals (66 of 69)
    # are higher; `test_negatives_are_flagged_on_held_out_real_radiographs` holds those
    assert sum(fr.looks_inverted(1.0 - image, segmenter) for image in chests) >= 5
    _, _, framing = fr.frame_inputs(Radiograph(negative, view="frontal"), None, DATA, segmenter)
    assert any("looks inverted" in w for w in framing.warnings)
    _, _, framing = fr.frame_inputs(Radiograph(cr, view="frontal"), None, DATA, segmenter)
    assert not any("inverted" in w for w in framing.warnings)


def test_lung_fields_are_darker_than_the_column_between_them_on_a_right_way_round_film(reference):
    """The contrast the negative check also reads: negative on a film, positive on its negative,
    and None without lung on both sides."""
    image, fields = reference
    view, mask = image[0], fields[0] > 0.5
    assert fr.lung_field_contrast(view, mask) < -0.05
    assert fr.lung_field_contrast(1.0 - view, mask) > 0.05
    one_side = mask.copy()
    one_side[:, : mask.shape[1] // 2] = False
    assert fr.lung_field_contrast(view, one_side) is None


def test_dicom_patient_age_is_read_in_years():
    assert patient_age_years("045Y") == 45 and patient_age_years("006M") == 0.5
    assert patient_age_years("") is None and patient_age_years("12") is None and patient_age_years("0X5Y") is None


def test_sampling_fields_do_not_block_loading():
    from axonct.presets import ModelPreset, model_preset, network_config

    d = model_preset("cpu").to_dict()
    a, b = model_preset("cpu").prior, model_preset("cpu").prior
    b.start_strength, b.sample_steps = 0.0, 7
    assert a != b and network_config(a) == network_config(b)
    b.channels = (8, 16, 32)
    assert network_config(a) != network_config(b)
    with pytest.raises(ValueError, match="input_domain"):
        d["coarse"]["input_domain"] = "raw"
        ModelPreset.from_dict(d)


def test_notes_of_the_reader_and_a_missing_lung_field_network_are_warnings(reference):
    image, _ = reference
    rg = Radiograph(image[0], view="frontal", meta={"input_notes": ["its PatientAge 000Y is a placeholder"]})
    _, _, framing = fr.frame_inputs(rg, None, DATA, None)
    assert "frontal: its PatientAge 000Y is a placeholder" in framing.warnings
    assert any(w.startswith("frontal: the weights have no lung-field network") for w in framing.warnings)
    assert not any("no lung fields found" in w for w in framing.warnings)


def test_the_same_image_as_frontal_and_lateral_is_refused(tiny_weights, frontal, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "reconstruct", "--frontal", str(frontal),
                           "--lateral", str(frontal), "--out", str(tmp_path / "r.nrrd"), "--weights", str(tiny_weights),
                           "--device", "cpu", "--precision", "fp32"], capture_output=True, text=True)
    assert proc.returncode == 2 and "is the same image as the frontal view" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "r.nrrd").exists()


def test_a_lateral_given_as_frontal_is_named(reference, segmenter):
    image, _ = reference
    assert fr.looks_lateral(image[0], segmenter) is False
    _, _, framing = fr.frame_inputs(Radiograph(image[1], view="frontal"), None, DATA, segmenter)
    assert any("frontal: the image looks like a lateral view" in w for w in framing.warnings)
    assert fr.looks_lateral(np.zeros((64, 64), np.float32), segmenter) is None  # no lung fields: no judgement


SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


needs_real_data = pytest.mark.skipif(not (SHARED_DATA / "manifest.csv").is_file(),
                                     reason="real data (../shared/data) not present")


@pytest.fixture(scope="module")
def real_radiographs():
    """(is a lateral, pixels) of every held-out real radiograph that reads."""
    import csv

    from axonct.errors import AxonInputError
    from axonct.io.radiograph import read_radiograph

    images = []
    for row in csv.DictReader(open(SHARED_DATA / "manifest.csv")):
        if row["kind"] != "cxr":
            continue
        try:
            images.append((row["view"] == "L", read_radiograph(SHARED_DATA / row["path"]).pixels.astype(np.float32)))
        except AxonInputError:
            continue  # a file refused on reading is not a view to check
    return images


@needs_real_data
def test_swapped_views_are_flagged_on_held_out_real_radiographs(segmenter, real_radiographs):
    """Thresholds were chosen on training DRRs; this is their held-out check (20/20 and 1/67 when set)."""
    counts = {True: [0, 0], False: [0, 0]}  # lateral? -> [flagged as lateral, images]
    for lateral, pixels in real_radiographs:
        counts[lateral][0] += bool(fr.looks_lateral(pixels, segmenter))
        counts[lateral][1] += 1
    assert counts[True][1] >= 15 and counts[True][0] >= 0.9 * counts[True][1]
    assert counts[False][1] >= 50 and counts[False][0] <= 0.05 * counts[False][1]


@needs_real_data
def test_negatives_are_flagged_on_held_out_real_radiographs(segmenter, real_radiographs):
    """The negative check's held-out rates: no real frontal flagged, most of their negatives caught
    (60 and 66 of 69 with the one-patient and the three-patient networks)."""
    frontals = [pixels for lateral, pixels in real_radiographs if not lateral]
    assert len(frontals) >= 50
    assert not any(fr.looks_inverted(pixels, segmenter) for pixels in frontals)
    caught = sum(fr.looks_inverted(pixels.max() + pixels.min() - pixels, segmenter) for pixels in frontals)
    assert caught >= 0.85 * len(frontals)
