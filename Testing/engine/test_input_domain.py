"""Stage I's "matched" input domain: views mapped onto the training views' grey-value quantiles,
measured by the trainer, carried by the weights' card and applied the same way at inference."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from axonct.transforms.grey_values import match_views
from axonct.pipeline.checkpoint import read_card
from axonct.pipeline.loading import load_trained_stage
from axonct.presets import ModelPreset, model_preset, network_config
from axonct.training.trainer import INPUT_TABLE_QUANTILES, train


def _tables():
    k = torch.linspace(0, 1, 64)
    return torch.stack([k ** 2, 0.2 + 0.6 * k])  # a frontal and a lateral distribution


def test_matched_views_take_the_table_quantiles_and_ignore_global_processing():
    rng = np.random.default_rng(0)
    views = torch.from_numpy(rng.random((3, 2, 40, 40)).astype(np.float32))
    tables = _tables()
    out = match_views(views, tables)
    assert out.shape == views.shape
    for v in range(2):  # each view onto its own table
        q = torch.quantile(out[:, v].reshape(3, -1), torch.tensor([0.1, 0.5, 0.9]), dim=1).T
        expect = np.interp([0.1, 0.5, 0.9], np.linspace(0, 1, 64), tables[v].numpy())
        assert np.allclose(q.numpy(), expect[None], atol=0.03)
    order = torch.argsort(views[0, 0].ravel())
    assert torch.all(torch.diff(out[0, 0].ravel()[order]) >= -1e-6)  # monotone: anatomy keeps its order
    processed = torch.sigmoid(8 * (views - 0.4)) ** 0.6  # a LUT and a gamma (float32 rounding ties a few pixels)
    assert (match_views(processed, tables) - out).abs().max() < 2e-3
    assert torch.allclose(match_views(out, tables), out, atol=1e-5)  # matching twice changes nothing
    with pytest.raises(ValueError, match="tables must be"):
        match_views(views, tables[:1])


def test_card_fields_and_their_validation():
    d = model_preset("cpu").to_dict()
    assert ModelPreset.from_dict(d).coarse.input_domain == "matched"
    del d["coarse"]["input_domain"]  # a card written before the field existed
    assert ModelPreset.from_dict(d).coarse.input_domain == "percentile"
    d["coarse"]["input_tables"] = [[0.0, 0.5, 1.0]]
    with pytest.raises(ValueError, match="frontal and a lateral"):
        ModelPreset.from_dict(d)
    d["coarse"]["input_tables"] = [[0.0, 0.5, 1.0], [0.0, 0.7, 0.6]]
    with pytest.raises(ValueError, match="lateral.*non-decreasing"):
        ModelPreset.from_dict(d)
    a = model_preset("cpu").coarse
    b = dataclasses.replace(a, input_domain="percentile", input_tables=((0.0, 1.0), (0.0, 1.0)))
    assert network_config(a) == network_config(b)  # the weights' card decides these, not the preset


def test_training_measures_the_tables_and_loading_applies_them_whatever_the_preset(tiny_cache, tmp_path):
    preset = model_preset("tiny")
    preset.train.steps, preset.train.validate_every, preset.train.val_cases = 1, 1000, 1
    run = tmp_path / "coarse"
    train("coarse", tiny_cache, preset, run, device="cpu", progress=False)
    card = read_card(run, "coarse")
    tables = card["config"]["coarse"]["input_tables"]
    assert card["config"]["coarse"]["input_domain"] == "matched"
    assert len(tables) == 2 and all(len(t) == INPUT_TABLE_QUANTILES for t in tables)
    assert all(np.all(np.diff(t) >= 0) and 0 <= t[0] < t[-1] <= 1 for t in tables)
    assert tables[0] != tables[1]  # a frontal and a lateral DRR are distributed differently
    assert json.loads((run / "config.json").read_text())["coarse"]["input_tables"] == tables

    model = load_trained_stage("coarse", run, model_preset("tiny"))  # a preset without tables
    assert model.cfg.input_tables == tuple(tuple(t) for t in tables)
    views = torch.rand(1, 2, *(model.detector_pixels,) * 2)
    assert torch.allclose(model.input_views(views), match_views(views, torch.tensor(tables)))


def test_a_resumed_run_keeps_the_tables_it_started_with(tiny_cache, tmp_path, monkeypatch):
    import axonct.training.trainer as trainer

    preset = model_preset("tiny")
    preset.train.steps, preset.train.validate_every, preset.train.val_cases = 1, 1000, 1
    run = tmp_path / "coarse"
    train("coarse", tiny_cache, preset, run, device="cpu", progress=False)
    first = read_card(run, "coarse")["config"]["coarse"]["input_tables"]

    measure = trainer.with_input_tables

    def shifted(p, maker, log=print):  # what another CPU's rounding could measure
        out = measure(p, maker, log)
        return dataclasses.replace(out, coarse=dataclasses.replace(out.coarse, input_tables=tuple(
            tuple(v + 1e-6 for v in t) for t in out.coarse.input_tables)))

    monkeypatch.setattr(trainer, "with_input_tables", shifted)
    preset.train.steps = 2
    train("coarse", tiny_cache, preset, run, resume=True, device="cpu", progress=False)
    assert read_card(run, "coarse")["config"]["coarse"]["input_tables"] == first
    assert read_card(run, "coarse")["trained_on"]["steps_done"] == 2

    config = json.loads((run / "config.json").read_text())
    config["coarse"]["input_tables"] = [[0.5, 0.1], [0.0, 1.0]]
    (run / "config.json").write_text(json.dumps(config))
    preset.train.steps = 3
    with pytest.raises(trainer.AxonInputError, match="config.json.*input tables"):
        train("coarse", tiny_cache, preset, run, resume=True, device="cpu", progress=False)
