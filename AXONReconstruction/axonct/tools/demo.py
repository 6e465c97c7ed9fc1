"""`axon demo`: the main job. The bundled real chest CT -> its biplanar DRRs (simulated as real
radiographs) -> reconstruction with the bundled weights -> metrics against the CT and a montage.

The demo weights were trained on this very CT, so its metrics are labelled "seen in training":
they show the pipeline works end to end, not how well it generalises (see the model card).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from axonct.io.ct import read_ct_with_meta
from axonct.io.ct_preprocess import ct_to_model
from axonct.physics.drr import drr_from_unit_volume
from axonct.tools.compare import compare, flat_metrics, save_comparison_montage
from axonct.options import ReconstructOptions
from axonct.pipeline.framing import model_view_radiographs
from axonct.pipeline.reconstruction import AxonPipeline, to_final_grid
from axonct.guidance.reprojection import consistency_report
from axonct.io.sample_data import sample_ct_path
from axonct.io.output_policy import Outputs
from axonct.io.volume_export import write_volume
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
from axonct.transforms.normalize import robust_unit


DEMO_FILES = ("reconstruction.nrrd", "ground_truth_model_grid.nrrd", "input_frontal.png", "input_lateral.png",
              "montage.png", "metrics.json")


def run_demo(out: str | Path, weights: str | Path | None = None, views: str = "realistic",
             options: ReconstructOptions | None = None, progress=None, overwrite: bool = False,
             **option_values) -> dict:
    """The demo with ``options`` (or their fields as keywords; the others keep their defaults): the
    seed also seeds the radiograph simulation."""
    from axonct.runtime import resolve_device
    from axonct.pipeline.loading import default_weights_dir

    if options is not None and option_values:
        raise TypeError(f"give options or option values, not both ({', '.join(option_values)})")
    options = (options or ReconstructOptions(**option_values)).validate()
    t0 = time.time()
    out = Path(out)
    outputs = Outputs("demo", overwrite=overwrite)  # every output checked before any compute
    outputs.folder(out)
    for name in DEMO_FILES:
        outputs.file(out / name)
    outputs.check(64 << 20)
    ct_path = sample_ct_path(fetch=True)
    pipe = AxonPipeline.load(weights or default_weights_dir(), resolve_device(options.device),
                             precision=options.precision)
    data = pipe.preset.data
    image, meta = read_ct_with_meta(ct_path)
    truth = ct_to_model(image, data.grid, remove_bed=data.remove_bed)
    with torch.no_grad():
        drr = drr_from_unit_volume(torch.from_numpy(truth.array), data.grid, data.geometry)
    if views == "realistic":
        model_views = simulate_radiograph(drr, RealismConfig(), seed=options.seed).numpy()
    else:
        model_views = robust_unit(drr[:, None])[:, 0].numpy()
    mask = np.ones(2, np.float32)
    frontal, lateral = model_view_radiographs(model_views, mask, data)  # with their geometry, like `axon drr`'s
    result = pipe(frontal, lateral, options, progress=progress)  # exactly what `axon reconstruct` runs
    rec = result.reconstruction
    record = pipe.cards["coarse"]["trained_on"]
    seen = meta.get("patient_id") in record.get("cases", []) or \
        Path(ct_path).name in {Path(s).name for s in record.get("synthetic_from", [])}  # chests made from it
    metrics = compare(rec.mean, truth.array, data.grid)
    metrics["stage_cuts"] = {  # what each stage adds (coarser grids resized only for the comparison)
        label: flat_metrics(compare(to_final_grid(torch.from_numpy(rec.cuts[cut])[None, None],
                                                   data.grid.size)[0, 0].numpy(), truth.array, data.grid))
        for cut, label in (("coarse", "stage I"), ("fine", "stages I+II"), ("sr", "stages I+II+III"))}
    metrics["case"] = {"source": str(ct_path), "patient_id": meta.get("patient_id"),
                       "status": "seen in training" if seen else "held out"}
    metrics["reprojection_consistency"] = consistency_report(rec.mean, data.grid, data, model_views, mask)
    metrics["seconds"] = {**{k: round(v, 1) for k, v in rec.seconds.items()}, "total": round(time.time() - t0, 1)}
    metrics["views"] = views
    metrics["consistency"] = "on" if options.consistency else "off"
    metrics["device"] = str(pipe.device)
    metrics["precision"] = pipe.precision.to_dict()
    metrics["framing"] = result.checks["framing"]
    metrics["anatomy"] = result.checks["anatomy"]
    metrics["warnings"] = result.warnings
    with outputs:  # written beside whatever the folder holds; all appear together
        write_volume(result.image(), out / "reconstruction.nrrd", outputs=outputs)
        write_volume(truth.to_hu_image(), out / "ground_truth_model_grid.nrrd", outputs=outputs)
        from PIL import Image

        from axonct.io.montage import to_uint8

        for i, name in enumerate(("frontal", "lateral")):
            Image.fromarray(to_uint8(model_views[i], 0.0, 1.0)).save(outputs.path(out / f"input_{name}.png"))
        save_comparison_montage(truth.array, {"AXON": rec.mean}, outputs.path(out / "montage.png"))
        outputs.path(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
