"""Real-radiograph behaviour of the bundled weights: processing does not change the lungs, and the real
CR from pydicom-data gives a chest with air in both halves.

Few sampling steps keep these tests short; quality numbers live in README and `axon evaluate --real`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axonct.io.radiograph import Radiograph
from axonct.options import ReconstructOptions
from axonct.physics.drr import drr_from_unit_volume
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
from axonct.pipeline.loading import default_weights_dir
from axonct.pipeline.reconstruction import AxonPipeline

STEPS = 6
LUNG_VOLUME_TOLERANCE = 0.25
"""Relative difference allowed between the lung air reconstructed from a DRR and from a strongly
processed copy of it (unsharp masking, local equalisation, a LUT, markers)."""


@pytest.fixture(scope="module")
def pipeline():
    return AxonPipeline.load(default_weights_dir(), "cpu", precision="fp32")


def _run(pipeline, radiograph, seed=0):
    return pipeline(radiograph, None, ReconstructOptions(steps=STEPS, seed=seed)).checks  # the default path


@pytest.mark.parametrize("chest_seed", [987654, 5551])  # seeds no training set uses
def test_processing_does_not_change_the_lungs(pipeline, chest_seed):
    """Stage I reads views matched to its training views' grey values (`coarse.input_domain`); with
    percentile-normalised views the first chest's lung air moved by 40 % (2664 vs 1592 mL)."""
    from axonct.data.synthetic_anatomy import SyntheticChestGenerator

    data = pipeline.preset.data
    chest = SyntheticChestGenerator(data).generate(chest_seed)
    with torch.no_grad():
        drr = drr_from_unit_volume(torch.from_numpy(chest.unit), data.grid, data.geometry, data.views)
    plain = simulate_radiograph(drr, RealismConfig.off().only(beer_lambert=True), seed=1).numpy()[0]
    strong = RealismConfig.clinical()
    strong.strong_unsharp_probability = strong.local_eq_probability = strong.lut_probability = 1.0
    strong.marker_probability = 1.0
    processed = simulate_radiograph(drr, strong, seed=2).numpy()[0]
    assert np.corrcoef(plain.ravel(), processed.ravel())[0, 1] < 0.98  # really processed
    a = _run(pipeline, Radiograph(plain, view="frontal"))
    b = _run(pipeline, Radiograph(processed, view="frontal"))
    va, vb = _lung_air_ml(a["anatomy"]), _lung_air_ml(b["anatomy"])
    assert va > 0 and abs(va - vb) / va < LUNG_VOLUME_TOLERANCE, (va, vb)


def _lung_air_ml(anatomy: dict) -> float:
    """All lung air, enclosed or behind an open wall: how much lung there is, whatever the wall (the
    wall is judged by the plausibility checks)."""
    return anatomy["enclosed_air_ml"] + anatomy["open_wall_air_ml"]


def _lung_air_fraction(anatomy: dict) -> float:
    return _lung_air_ml(anatomy) / anatomy["body_ml"]


def test_the_real_cr_report_names_every_failed_check(cr_checks):
    from axonct.anatomy import plausibility_warnings

    checks = cr_checks
    assert checks["input_domain"].startswith("matched")  # the report says how Stage I read the view
    assert checks["framing"]["views"]["frontal"]["method"] == "lung-fields"
    anatomy = checks["anatomy"]
    assert anatomy["plausible"] == (not anatomy["plausibility_failures"])
    expected = plausibility_warnings(anatomy)
    assert len(expected) == len(anatomy["plausibility_failures"]) and set(expected) <= set(checks["warnings"])
    assert 0 <= checks["lung_fields"]["dice"]["frontal"] <= 1


def test_the_real_cr_gives_a_plausible_chest_behind_its_lung_fields(cr_checks):
    """The one-patient weights left its chest wall open (64 % of the lung air open to the outside);
    the weights trained on every training patient with the whole chest in view close it."""
    assert cr_checks["anatomy"]["plausible"], cr_checks["anatomy"]["plausibility_failures"]
    assert cr_checks["lung_fields"]["dice"]["frontal"] > 0.6


EXPORT_AIR_TOLERANCE = 0.04
"""Absolute difference allowed in lung air (share of the body) between the real CR read from its
DICOM and the same image exported as a user might have it."""


@pytest.fixture(scope="module")
def cr_checks(pipeline):
    from axonct.io.radiograph import read_radiograph
    from axonct.io.sample_data import sample_cr_path

    return _run(pipeline, read_radiograph(sample_cr_path(), view="frontal"))


@pytest.mark.parametrize("export", ["jpeg", "cropped-rotated"])
def test_an_exported_copy_of_the_real_cr_gives_the_same_lungs(pipeline, cr_checks, export, tmp_path):
    from PIL import Image

    from axonct.io.radiograph import read_radiograph
    from axonct.io.sample_data import sample_cr_path

    px = read_radiograph(sample_cr_path(), view="frontal").pixels.astype(np.float32)
    lo, hi = np.percentile(px, [0.5, 99.5])
    image = Image.fromarray((np.clip((px - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
    path = tmp_path / ("cr.jpg" if export == "jpeg" else "cr.png")
    if export == "cropped-rotated":  # a tighter field and a patient turned by 5 degrees
        w, h = image.size
        image = image.crop((int(0.08 * w), int(0.1 * h), int(0.92 * w), int(0.95 * h))).rotate(5, fillcolor=0)
    image.save(path, **({"quality": 75} if export == "jpeg" else {}))
    checks = _run(pipeline, read_radiograph(path, view="frontal"))
    assert checks["framing"]["views"]["frontal"]["method"] == "lung-fields"
    a, b = cr_checks["anatomy"], checks["anatomy"]
    assert abs(_lung_air_fraction(a) - _lung_air_fraction(b)) < EXPORT_AIR_TOLERANCE, (a, b)


def test_evaluate_real_writes_a_row_per_file_and_an_error_row_for_a_bad_one(tmp_path):
    import csv
    import json
    import subprocess
    import sys

    from PIL import Image

    from axonct.io.sample_data import sample_cr_path

    folder = tmp_path / "xrays"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not an image")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(folder / "noise.png")
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "evaluate", "--real", str(folder), str(sample_cr_path()),
                           "--out", str(out), "--steps", "2", "--precision", "fp32"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "real_cases.csv")))
    status = {r["file"]: r["status"] for r in rows}
    assert status["broken.png"].startswith("error:") and "broken.png" in status["broken.png"]
    assert status["noise.png"] == "ok" and status["RG1_UNCR.dcm"] == "ok"
    cr = next(r for r in rows if r["file"] == "RG1_UNCR.dcm")
    assert cr["framing"] == "lung-fields" and float(cr["lung_field_dice"]) > 0
    noise = next(r for r in rows if r["file"] == "noise.png")
    assert noise["framing"] == "whole-image" and "no lung fields" in noise["warnings"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == 3 and summary["reconstructed"] == 2 and (out / "montage.png").stat().st_size > 0


def test_evaluate_real_refuses_a_missing_input(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "evaluate", "--real", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "e")], capture_output=True, text=True)
    assert proc.returncode == 2 and "nope" in proc.stderr and "not found" in proc.stderr
    assert not (tmp_path / "e").exists()


def test_gallery_shows_real_and_training_inputs_as_each_network_reads_them(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from axonct.io.sample_data import sample_cr_path

    out = tmp_path / "gallery.png"
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "gallery", "--real", str(sample_cr_path()),
                           "--out", str(out), "--training", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    width, height = Image.open(out).size
    columns, rows = 5, 3  # as read | framed | Stage I input | lung-field net input | lung fields; CR + 2 training
    assert width % columns == 0 and height % rows == 0 and height // rows > width // columns

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    again = tmp_path / "again.png"
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "gallery", "--real", str(broken),
                           "--out", str(again)], capture_output=True, text=True)
    assert proc.returncode == 2 and "broken.png" in proc.stderr, proc.stderr[-2000:]
    assert not again.exists() and not list(tmp_path.glob(".*again*"))
