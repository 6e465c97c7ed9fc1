"""Export a reconstruction (and its standard-deviation volume) with the engine's writer, without Qt:
NRRD, NIfTI (.nii.gz) or a DICOM CT series folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from . import mrmlio
from .reconstruction import REF_UNCERTAINTY

EXPORT_SUFFIX = {"nrrd": ".nrrd", "nifti": ".nii.gz", "dicom": ""}


class ExportLogic:
    """Mixed into `logic.ReconstructionLogic`."""

    @staticmethod
    def safeFileName(name: str) -> str:
        """A node name as a file stem: no dots either, since the writer reads the format from the suffix
        (a DICOM export of 'pa.png' would otherwise be taken for a PNG)."""
        cleaned = re.sub(r"[^\w-]+", "_", name).strip("_-")
        return cleaned or "AXON_reconstruction"

    def exportVolume(self, volumeNode, directory, fileFormat: str = "nrrd", includeUncertainty: bool = True) -> list[Path]:
        """Write the volume (and its SD map, if any) with the engine's writer: NRRD, NIfTI (.nii.gz)
        or a DICOM CT series folder (derived, research-use series description). Returns the paths."""
        from axonct.errors import AxonInputError
        from axonct.io.volume_export import sibling, write_volume

        if volumeNode is None:
            raise ValueError("choose a volume to export")
        if fileFormat not in EXPORT_SUFFIX:
            raise ValueError(f"format must be one of {sorted(EXPORT_SUFFIX)}, not {fileFormat!r}")
        text = str(directory or "").strip()
        if text in ("", "."):
            raise ValueError("choose an output folder")
        folder = Path(text).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (self.safeFileName(volumeNode.GetName()) + EXPORT_SUFFIX[fileFormat])
        written = []
        try:
            written.append(write_volume(mrmlio.imageFromVolumeNode(volumeNode, np.float32), path))
            std = volumeNode.GetNodeReference(REF_UNCERTAINTY) if includeUncertainty else None
            if std is not None:
                written.append(write_volume(mrmlio.imageFromVolumeNode(std, np.float32), sibling(path, "std"),
                                            "AXON voxel-wise standard deviation"))
        except AxonInputError as exc:
            raise ValueError(f"cannot export '{volumeNode.GetName()}': {exc.problem}") from None
        return [Path(p) for p in written]
