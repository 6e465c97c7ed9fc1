"""Trainer: exact resume, checkpoint cards and refusals, two-process gloo training."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from axonct.pipeline.checkpoint import load_into, load_stage
from axonct.errors import AxonInputError
from axonct.presets import model_preset
from axonct.pipeline.loading import build_stage
from axonct.training.trainer import train

REPO = Path(__file__).resolve().parents[2]


def _preset(steps, **train_overrides):
    p = model_preset("tiny")
    p.train.steps = steps
    p.train.log_every = 1
    p.train.checkpoint_every = 3
    p.train.validate_every = 1000
    p.train.val_cases = 1
    for k, v in train_overrides.items():
        setattr(p.train, k, v)
    return p


def _losses(run: Path) -> list[float]:
    with open(run / "train_log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_resumed_run_continues_the_same_loss_curve(tiny_cache, tmp_path):
    full = tmp_path / "full"
    train("coarse", tiny_cache, _preset(6), full, device="cpu", progress=False)
    part = tmp_path / "part"
    train("coarse", tiny_cache, _preset(3), part, device="cpu", progress=False)
    with pytest.raises(AxonInputError, match="--resume"):
        train("coarse", tiny_cache, _preset(6), part, device="cpu", progress=False)
    train("coarse", tiny_cache, _preset(6), part, resume=True, device="cpu", progress=False)
    a, b = _losses(full), _losses(part)
    assert len(a) == len(b) == 6
    assert b == pytest.approx(a, rel=1e-5, abs=1e-7)
    sa, _ = load_stage(full, "coarse")
    sb, _ = load_stage(part, "coarse")
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k
    with pytest.raises(AxonInputError, match="different stage or config"):
        train("coarse", tiny_cache, _preset(8, lr=1e-2), part, resume=True, device="cpu", progress=False)


def test_checkpoint_card_and_refusals(tiny_cache, tmp_path):
    run = tmp_path / "sr"
    train("sr", tiny_cache, _preset(3), run, device="cpu", progress=False)
    state, card = load_stage(run, "sr", expected=model_preset("tiny"))
    assert card["preset"] == "tiny" and card["format_version"] == 1
    assert card["trained_on"]["cases"] and card["geometry"]["source_to_isocenter_mm"] == 541.0
    assert (run / "val_log.csv").exists() and list((run / "val_montages").glob("*.png"))
    model = build_stage("sr", model_preset("tiny"))
    load_into(model, state, run / "sr.safetensors")

    with pytest.raises(AxonInputError, match="trained for preset 'tiny', not 'cpu'"):
        load_stage(run, "sr", expected=model_preset("cpu"))
    with pytest.raises(AxonInputError, match="holds the 'sr' stage"):
        (run / "coarse.json").write_text((run / "sr.json").read_text())
        (run / "coarse.safetensors").write_bytes((run / "sr.safetensors").read_bytes())
        load_stage(run, "coarse")
    with pytest.raises(AxonInputError, match="do not fit this network"):
        load_into(build_stage("sr", model_preset("cpu")), state, run / "sr.safetensors")

    broken = tmp_path / "broken"
    broken.mkdir()
    data = (run / "sr.safetensors").read_bytes()
    (broken / "sr.safetensors").write_bytes(data[: len(data) // 2])
    (broken / "sr.json").write_text((run / "sr.json").read_text())
    with pytest.raises(AxonInputError, match="truncated"):
        load_stage(broken, "sr")
    card_v2 = json.loads((run / "sr.json").read_text())
    card_v2["format_version"] = 99
    (broken / "sr.safetensors").write_bytes(data)
    (broken / "sr.json").write_text(json.dumps(card_v2))
    with pytest.raises(AxonInputError, match="format version 99"):
        load_stage(broken, "sr")
    (broken / "sr.json").unlink()
    with pytest.raises(AxonInputError, match="missing"):
        load_stage(broken, "sr")


def test_controlnet_needs_prior_and_coarse(tiny_cache, tmp_path):
    with pytest.raises(AxonInputError, match="--prior"):
        train("controlnet", tiny_cache, _preset(2), tmp_path / "cn", device="cpu", progress=False)


def test_two_gloo_processes_train_identical_weights(tiny_cache, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "axonct.app.cli", "train", "sr", "--data", str(tiny_cache), "--config", "tiny", "--steps", "4",
           "--out", str(run), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(summary["rank_param_checksums"]) == 2 and summary["ranks_agree"] is True
    assert (run / "sr.safetensors").exists()


def test_resumed_run_on_another_cache_keeps_its_whole_training_record():
    from axonct.training.trainer import merge_training_record

    first = {"cache": "/a", "cases": ["cxr"], "steps": 700}
    second = {"cache": "/synth", "cases": ["SYN0-00000", "cxr"], "steps": 1500, "synthetic_from": ["/d/cxr.nii.gz"]}
    merged = merge_training_record(first, second)
    assert merged["cases"] == ["cxr", "SYN0-00000"]  # the real case stays "seen in training"
    assert merged["caches"] == ["/a", "/synth"] and merged["synthetic_from"] == ["/d/cxr.nii.gz"]
    assert merged["steps"] == 1500
    assert merge_training_record({}, second) == second


def test_fine_tuning_keeps_what_its_starting_weights_saw(tiny_cache, tmp_path):
    first = tmp_path / "first"
    train("sr", tiny_cache, _preset(1), first, device="cpu", progress=False)
    start_cases = json.loads((first / "sr.json").read_text())["trained_on"]["cases"]
    tuned = tmp_path / "tuned"
    train("sr", tiny_cache, _preset(1), tuned, device="cpu", progress=False, init_from=str(first))
    record = json.loads((tuned / "sr.json").read_text())["trained_on"]
    assert record["initialised_from"]["weights"] == str(first) and record["initialised_from"]["steps"] == 1
    assert set(start_cases) <= set(record["cases"])
    a, _ = load_stage(first, "sr")
    b, _ = load_stage(tuned, "sr")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # it trained on from there
    train("sr", tiny_cache, _preset(2), tuned, resume=True, device="cpu", progress=False)
    resumed = json.loads((tuned / "sr.json").read_text())["trained_on"]
    assert resumed["initialised_from"] == record["initialised_from"] and resumed["steps_done"] == 2
