"""Inputs that used to slip through or end in a traceback, refused in one line (exit 2) where a user
meets them: CTs no scanner makes, a HU+1024 CT hidden by its padding ring, output names that name
nothing, a weights card that is not an object, and `evaluate --real` with nothing usable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk


def axon(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "axonct.app.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def chest_hu() -> np.ndarray:
    """A small elliptic chest in HU with two lungs and air around it."""
    z, y, x = np.mgrid[:40, :64, :64]
    body = ((y - 32) ** 2 / 20**2 + (x - 32) ** 2 / 26**2) < 1
    lungs = ((y - 32) ** 2 / 10**2 + (np.abs(x - 32) - 11) ** 2 / 7**2) < 1
    hu = np.full(body.shape, -1000.0)
    hu[body] = 40.0
    hu[lungs & body] = -850.0
    return hu


def write_ct(path, array, spacing=(2.0, 2.0, 2.0)):
    img = sitk.GetImageFromArray(np.asarray(array, np.float32))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def outside_scan_circle() -> np.ndarray:
    _, y, x = np.mgrid[:40, :64, :64]
    return ((y - 32) ** 2 + (x - 32) ** 2) > 31**2


@pytest.mark.parametrize("name,array,spacing,words", [
    ("huge_voxels", chest_hu(), (100.0, 100.0, 100.0), ["voxels of 100 x 100 x 100 mm"]),
    ("tiny_voxels", chest_hu(), (0.001, 0.001, 0.001), ["voxels of 0.001 x 0.001 x 0.001 mm"]),
    ("long_body", np.repeat(chest_hu(), 3, axis=0), (2.0, 2.0, 19.0), ["spans", "no CT is larger"]),
    ("times_1000", chest_hu() * 1000, (2.0, 2.0, 2.0), ["beyond the 16-bit range"]),
    ("stored_plus_1024_padded", np.where(outside_scan_circle(), -2000.0, chest_hu() + 1024), (2.0, 2.0, 2.0),
     ["inside the scanned field", "--hu-offset -1024"]),
])
def test_cts_no_scanner_makes_are_refused(tmp_path, name, array, spacing, words):
    ct = write_ct(tmp_path / f"{name}.nii.gz", array, spacing)
    for args in (["drr", "--ct", ct, "--out", tmp_path / "drr", "--preset", "tiny"],
                 ["prepare", "--ct", ct, "--out", tmp_path / "cache", "--preset", "tiny", "--no-progress"]):
        proc = axon(*args)
        assert proc.returncode == 2, (args[0], proc.stderr[-2000:])
        line = proc.stderr.strip().splitlines()
        assert len(line) == 1 and all(w in line[0] for w in words), (args[0], proc.stderr)
    assert not (tmp_path / "drr").exists() and not (tmp_path / "cache").exists()


def test_a_padded_hu_plus_1024_ct_is_read_with_its_offset(tmp_path):
    """The refusal's advice works: --hu-offset is accepted (the padding is not taken for air)."""
    ct = write_ct(tmp_path / "stored.nii.gz", np.where(outside_scan_circle(), -2000.0, chest_hu() + 1024))
    from axonct.io.ct import read_ct

    a = sitk.GetArrayFromImage(read_ct(ct, hu_offset=-1024.0))
    assert abs(float(np.median(a[~outside_scan_circle()])) - float(np.median(chest_hu()[~outside_scan_circle()]))) < 1
    correct = write_ct(tmp_path / "padded_hu.nii.gz", np.where(outside_scan_circle(), -3024.0, chest_hu()))
    read_ct(correct)  # a correct CT with a padding ring still passes


@pytest.mark.parametrize("out", [".", "/", "", "sub/.."])
def test_an_output_name_that_names_nothing_is_refused(tmp_path, frontal, out):
    (tmp_path / "sub").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = axon("reconstruct", "--frontal", frontal, "--out", out, "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 2 and "names no output" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_weights_card_that_is_a_json_list_is_refused(tiny_weights, frontal, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    (weights / "coarse.json").write_text(json.dumps([1, 2, 3]))
    proc = axon("reconstruct", "--frontal", frontal, "--out", tmp_path / "r.nrrd", "--weights", weights,
                "--device", "cpu")
    assert proc.returncode == 2 and "coarse.json" in proc.stderr and "not an object" in proc.stderr, proc.stderr[-2000:]


def test_evaluate_real_with_nothing_usable_is_one_line(tmp_path):
    folder = tmp_path / "xrays"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not an image")
    proc = axon("evaluate", "--real", folder, "--out", tmp_path / "eval", "--steps", "2")
    assert proc.returncode == 2 and "none of the 1 radiograph(s) could be reconstructed" in proc.stderr, \
        proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "eval").exists()


def test_itk_errors_become_one_line_naming_the_cause(tmp_path):
    """ITK's errors span lines and name its own source file; a missing .raw was reported as the
    header being unreadable, after a stray line MetaIO prints itself."""
    img = sitk.GetImageFromArray(np.zeros((10, 10, 10), np.int16))
    sitk.WriteImage(img, str(tmp_path / "scan.mhd"))
    (tmp_path / "scan.raw").unlink()
    proc = axon("drr", "--ct", tmp_path / "scan.mhd", "--out", tmp_path / "out", "--preset", "tiny")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"axon drr: error: {tmp_path / 'scan.mhd'}: its pixel data file scan.raw is missing (looked for "
        f"{tmp_path / 'scan.raw'})"], proc.stderr
    (tmp_path / "garbage.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 4\nElementType = MET_XX\n")
    proc = axon("drr", "--ct", tmp_path / "garbage.mha", "--out", tmp_path / "out", "--preset", "tiny")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "garbage.mha" in lines[0], proc.stderr
    assert ".cxx" not in lines[0] and ".hxx" not in lines[0] and "Exception thrown" not in lines[0]


def test_itk_reason_keeps_the_cause():
    from axonct.errors import itk_reason

    text = ("Exception thrown in SimpleITK ImageFileReader_Execute: /build/itkMetaImageIO.cxx:490:\n"
            "ITK ERROR: MetaImageIO(0x55cf3c495920): File cannot be read: /x/a.mhd for reading.\n"
            "Reason: Permission denied")
    assert itk_reason(RuntimeError(text)) == "File cannot be read: /x/a.mhd for reading. (Permission denied)"
    assert itk_reason(RuntimeError("plain one line")) == "plain one line"
