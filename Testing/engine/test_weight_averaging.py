"""Averaging one stage of two fine-tunes (the bundled Stage I is such an average): the tensors, the
other stages, and a record that keeps every case either parent saw ("seen in training")."""

from __future__ import annotations

import shutil

import pytest
import torch

from axonct.errors import AxonInputError
from axonct.pipeline.checkpoint import load_stage, save_stage
from axonct.presets import ModelPreset
from axonct.training.averaging import average_stage


def _variant(tiny_weights, folder, change, cases):
    """A copy of the tiny weights whose coarse stage is changed by ``change`` and saw ``cases``."""
    shutil.copytree(tiny_weights, folder)
    state, card = load_stage(tiny_weights, "coarse")
    record = dict(card["trained_on"], cases=cases)
    save_stage(folder, "coarse", change(state), ModelPreset.from_dict(card["config"]), record)
    return folder


def test_the_average_lies_between_the_parents_and_remembers_what_both_saw(tiny_weights, tmp_path):
    shifted = _variant(tiny_weights, tmp_path / "b",
                       lambda s: {k: v + 1.0 if v.is_floating_point() else v for k, v in s.items()}, ["other-case"])
    out = tmp_path / "avg"
    average_stage(tiny_weights, shifted, out, "coarse", second_weight=0.25)
    a, card_a = load_stage(tiny_weights, "coarse")
    mixed, card = load_stage(out, "coarse")  # checksum and card are valid
    for k, v in a.items():
        expected = v + 0.25 if v.is_floating_point() else v
        assert torch.allclose(mixed[k].float(), expected.float(), atol=1e-5), k
    cases = card["trained_on"]["cases"]
    assert set(card_a["trained_on"]["cases"]) <= set(cases) and "other-case" in cases
    assert card["trained_on"]["averaged_from"]["second_weight"] == 0.25
    for other in ("sr", "controlnet", "sampling"):  # copied from the first folder
        for path in tiny_weights.glob(f"{other}.*"):
            assert (out / path.name).read_bytes() == path.read_bytes()


def test_networks_that_differ_are_refused_and_nothing_is_written(tiny_weights, tmp_path):
    pruned = _variant(tiny_weights, tmp_path / "b", lambda s: dict(list(s.items())[1:]), ["x"])
    with pytest.raises(AxonInputError, match="differs"):
        average_stage(tiny_weights, pruned, tmp_path / "avg")
    assert not (tmp_path / "avg").exists()
    with pytest.raises(ValueError, match="second weight"):
        average_stage(tiny_weights, tiny_weights, tmp_path / "avg", second_weight=1.5)
