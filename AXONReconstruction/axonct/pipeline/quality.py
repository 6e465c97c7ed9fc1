"""What a reconstruction's report says about its inputs and its plausibility, without ground truth:
how the radiographs were framed, whether the reconstruction's lungs lie behind the input's lung
fields, and chest measures (`axonct.anatomy`). `axon reconstruct` and `axon evaluate --real` share it.
"""

from __future__ import annotations

from axonct.pipeline.framing import Framing
from axonct.pipeline.reconstruction import Reconstruction


def framing_summary(framing: Framing) -> str:
    parts = [f"{name} framed by {'its ' if v.method == 'lung-fields' else 'the '}{v.method.replace('-', ' ')}"
             for name, v in framing.views.items()]
    return "; ".join(parts) + f"; patient size: {framing.size_source} (voxels x{framing.size_factor:.2f})"


def input_checks(rec: Reconstruction, framing: Framing, fields) -> dict:
    """What the report says about the inputs and the result's plausibility: how the views were framed,
    whether the reconstruction's lungs lie behind the input's lung fields (Dice per view), and chest
    measures that need no ground truth (`axonct.anatomy`)."""
    from axonct.anatomy import chest_metrics, plausibility_warnings
    from axonct.io.ct_preprocess import unit_to_hu

    grid = rec.preset.data.grid
    hu = unit_to_hu(rec.mean, grid)
    anatomy = chest_metrics(hu, rec.output_grid.spacing_mm)
    warnings = list(framing.warnings)
    agreement = None
    if fields is not None:
        from axonct.guidance.lung_fields import lung_field_agreement

        agreement = lung_field_agreement(hu, rec.preset.data, fields, rec.view_mask)
        for view in agreement["low"]:
            warnings.append(f"the reconstruction's lungs do not lie behind the {view} radiograph's lung fields "
                            f"(Dice {agreement['dice'][view]:.2f} < {agreement['threshold']}); check the input and "
                            "the framing")
    warnings += plausibility_warnings(anatomy)  # open chest wall, one-sided or too little air, a box
    if not anatomy["plausible"] and float(rec.view_mask[1]) > 0:
        warnings.append(LATERAL_HINT)
    return {"framing": framing.to_dict(), "input_domain": INPUT_DOMAIN_TEXT[rec.preset.coarse.input_domain],
            "lung_fields": agreement, "anatomy": anatomy, "warnings": warnings}


LATERAL_HINT = ("a lateral view was given: a real lateral film that disagrees with the frontal one (framing, "
                "arms, processing) can spoil a reconstruction whose frontal view alone gives a plausible chest; "
                "compare with a reconstruction from the frontal view alone")
"""Said with an implausible result of a biplanar run. On the held-out real PA + lateral pairs (the
`cpu-wide` candidate), 6 of the 8 implausible pairs whose PA film is also in the frontal set gave a
plausible chest from that film alone."""

INPUT_DOMAIN_TEXT = {
    "matched": "matched: each view's grey values mapped onto the training views' distribution (global processing drops out)",
    "equalized": "equalized: each view rank-equalised (global processing drops out)",
    "percentile": "percentile: views as normalised (0.5-99.5 % percentiles), as the weights were trained",
}
"""How Stage I read the views (`CoarseConfig.input_domain`), for the report."""
