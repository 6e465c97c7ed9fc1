"""Shared by the scripts that reconstruct the real evaluation CTs (`stage2_sweep.py`,
`compare_weights.py`): the CTs as `axon evaluate --suite` lists them, their reconstructions from
`axon drr` files through the default path, and the mean table."""

from __future__ import annotations

import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def evaluation_cts(data: str | Path) -> list[Path]:
    """The evaluation CTs of a data folder laid out like ../shared/data (`evaluate_suite.read_suite`)."""
    from axonct.tools.evaluate_suite import read_suite

    return [case.files["ct"] for case in read_suite(data).cts]


def reconstruct_ct(pipeline, ct: Path, runs: dict[str, tuple[bool, dict, dict]]) -> dict:
    """name -> reconstruction (SimpleITK image) of ``ct``'s `axon drr` views in the pipeline's geometry;
    ``runs``: name -> (with the lateral view, ReconstructOptions changes, extra pipeline arguments)."""
    import dataclasses

    from axonct.options import ReconstructOptions
    from axonct.tools.drr_export import export_drrs

    images = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_drrs(ct, tmp, pipeline.preset.data, realism=None, save_cube=False)
        for name, (biplanar, changes, call) in runs.items():
            options = dataclasses.replace(ReconstructOptions(), **changes)
            lateral = Path(tmp) / "lateral.nrrd" if biplanar else None
            images[name] = pipeline(Path(tmp) / "frontal.nrrd", lateral, options, **call).image()
    return images


def print_means(rows: list[dict], by: tuple[str, ...], pairs: list[tuple[str, str]]) -> None:
    """One line per group of ``by`` values: the mean of each (PSNR key, SSIM key) pair over the CTs."""
    groups = list(dict.fromkeys(tuple(r[k] for k in by) for r in rows))
    for group in groups:
        sel = [r for r in rows if tuple(r[k] for k in by) == group]
        mean = lambda k: sum(r[k] for r in sel) / len(sel)  # noqa: E731
        cells = " | ".join(f"{mean(p):.2f} dB / {mean(s):.3f}" for p, s in pairs)
        print(f"{' '.join(map(str, group)):50s} {cells}")
