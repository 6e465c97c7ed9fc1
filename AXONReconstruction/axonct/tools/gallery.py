"""A PNG contact sheet of cache or synthetic cases (`axon synth --gallery`).

A tool for looking at training data, not part of making it: it reads a cache the way training does
(`CTCache`) or takes generated chests directly, and draws each as mid slices and its two DRRs.
"""

from __future__ import annotations

from pathlib import Path

from axonct.data.datasets import CTCache
from axonct.errors import AxonInputError
from axonct.io.ct_preprocess import hu_to_unit
from axonct.io.montage import orthogonal_slices, save_montage, to_uint8

GALLERY_WINDOW_HU = (-1000.0, 300.0)
"""Lungs, soft tissue and bone all distinguishable in one window."""


def save_gallery(cases, path: str | Path, n: int = 6, tile: int = 160) -> Path:
    """PNG with one row per case: axial, coronal, sagittal mid slices, frontal and lateral DRRs.

    ``cases``: a cache folder, a CTCache, or a sequence of SyntheticChest.
    """
    items = []
    if isinstance(cases, (str, Path, CTCache)):
        cache = cases if isinstance(cases, CTCache) else CTCache(cases)
        grid = cache.config.grid
        for c in cache.all_ids[:n]:
            ct, drr = cache.load(c)
            items.append((c, ct, drr))
    else:
        for i, ch in enumerate(list(cases)[:n]):
            grid = ch.config.grid
            items.append((f"case {i}", ch.unit, ch.render_drr()))
    if not items:
        raise AxonInputError(str(cases) if isinstance(cases, (str, Path)) else None, "has no cases for a gallery")
    lo, hi = (float(hu_to_unit(v, grid)) for v in GALLERY_WINDOW_HU)
    rows = []
    for name, ct, drr in items:
        sl = orthogonal_slices(ct)
        row = [(f"{name} axial", to_uint8(sl["axial"], lo, hi)), ("coronal", to_uint8(sl["coronal"], lo, hi)),
               ("sagittal", to_uint8(sl["sagittal"], lo, hi))]
        row += [(v, to_uint8(drr[k], 0.0, None)) for k, v in enumerate(("frontal DRR", "lateral DRR")[: len(drr)])]
        rows.append(row)
    return save_montage(rows, path, tile=tile)


def save_domain_gallery(radiographs: list[str | Path], path: str | Path, weights: str | Path | None = None,
                        n_training: int = 4, seed: int = 0, tile: int = 160) -> Path:
    """Real radiographs next to training inputs, each after the preprocessing the networks see.

    Row per real file: the file as read, framed like the training DRRs (`pipeline.framing`), as
    Stage I reads it (its card's input domain: matched to the training views' grey values for the
    shipped weights), rank-equalised (the lung-field network's input) and its lung fields. Row per
    training input: a synthetic chest's DRR through the default realism chain, the same
    preprocessing and its exact lung fields. If the two kinds of rows look alike, the domain gap is
    closed as far as the eye can tell.
    """
    import numpy as np
    import torch

    from axonct.data.synthetic_anatomy import SyntheticChestGenerator
    from axonct.io.radiograph import read_radiograph
    from axonct.transforms.grey_values import equalize_view
    from axonct.transforms.window import to_model_view
    from axonct.models.coarse import coarse_input_views
    from axonct.models.lung_fields import load_lung_field_segmenter, project_lung_fields
    from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
    from axonct.pipeline.framing import frame_inputs
    from axonct.pipeline.loading import default_weights_dir
    from axonct.presets import ModelPreset
    from axonct.pipeline.checkpoint import read_card

    weights = Path(weights) if weights else default_weights_dir()
    preset = ModelPreset.from_dict(read_card(weights, "coarse")["config"])
    data = preset.data
    stage1_label = f"Stage I input ({preset.coarse.input_domain})"
    eq_label = "equalised (lung-field net)"

    def stage1(image):
        return coarse_input_views(preset.coarse, torch.from_numpy(np.stack([image, image])))[0].numpy()
    segmenter = load_lung_field_segmenter(weights)
    rows = []
    for f in radiographs:
        rg = read_radiograph(f, view="frontal")
        views, _, framing = frame_inputs(rg, None, data, segmenter)[:3]
        row = [(Path(f).name[:20], to_uint8(to_model_view(rg, views.shape[-1]))),
               (f"framed ({framing.views['frontal'].method})", to_uint8(views[0], 0.0, 1.0)),
               (stage1_label, to_uint8(stage1(views[0]), 0.0, 1.0)),
               (eq_label, to_uint8(equalize_view(views[0]), 0.0, 1.0))]
        if segmenter is not None:
            row.append(("lung fields", to_uint8(segmenter.probabilities(views[0]), 0.0, 1.0)))
        rows.append(row)
    gen = SyntheticChestGenerator(data)
    lung_ids = [i for name, (i, _) in gen.structures.items() if name.startswith("lung_")]
    for k in range(n_training):
        chest = gen.generate(seed + k) if k else gen.reference()
        image = simulate_radiograph(torch.from_numpy(chest.render_drr()), RealismConfig(), seed=seed + k).numpy()[0]
        fields = np.asarray(project_lung_fields(np.isin(chest.labels, lung_ids), data))[0]
        rows.append([(f"training {'CT' if k == 0 else f'synthetic {k}'}", to_uint8(image, 0.0, 1.0)),
                     ("as trained (framed)", to_uint8(image, 0.0, 1.0)),
                     (stage1_label, to_uint8(stage1(image), 0.0, 1.0)),
                     (eq_label, to_uint8(equalize_view(image), 0.0, 1.0)),
                     ("exact lung fields", to_uint8(fields.astype(np.float32), 0.0, 1.0))])
    return save_montage(rows, path, tile=tile)
