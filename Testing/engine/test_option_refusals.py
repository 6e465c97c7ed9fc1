"""Options out of range are refused in one line (exit 2) before any work, wherever a user meets them:
the command line, a weights folder's sampling.json, and the pipeline itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def axon(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "axonct.app.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def assert_one_line_refusal(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "usage:" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("option,value", [("--size", "0"), ("--size", "-4"), ("--pixels", "0"), ("--fov", "0"),
                                          ("--fov", "-320"), ("--fov", "nan"), ("--detector-mm", "0"),
                                          ("--sid", "inf")])
def test_drr_geometry_options_out_of_range(tmp_path, option, value):
    proc = axon("drr", "--ct", tmp_path / "ct.nii.gz", "--out", tmp_path / "out", option, value)
    assert_one_line_refusal(proc, "axon drr: error:", option)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,word", [
    (["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--steps", "1001"], "--steps"),
    (["reconstruct", "--frontal", "f.png", "--out", "o.nrrd", "--samples", "65"], "--samples"),
    (["evaluate", "--data", "cache", "--weights", "w", "--out", "e", "--max-cases", "0"], "--max-cases"),
    (["evaluate", "--data", "cache", "--weights", "w", "--out", "e", "--max-cases", "-3"], "--max-cases"),
    (["benchmark", "drr", "--sizes", "0"], "--sizes"),
    (["benchmark", "drr", "--sizes", "100000"], "--sizes"),
    (["benchmark", "drr", "--repeats", "0"], "--repeats"),
    (["benchmark", "pipeline", "--steps", "5000"], "--steps"),
    (["prepare", "--ct", "x", "--out", "c", "--size", "0"], "--size"),
    (["reconstruct", "--frontal", "f.png"], "--out"),  # a missing required option
])
def test_command_line_refusals_are_one_line(tmp_path, args, word):
    assert_one_line_refusal(axon(*args, cwd=tmp_path), "error:", word)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_pred_and_gt_do_not_mix_with_a_cache(tmp_path):
    proc = axon("evaluate", "--pred", "p.nrrd", "--gt", "g.nii.gz", "--data", "cache", cwd=tmp_path)
    assert_one_line_refusal(proc, "--data")


def test_sampling_json_beyond_the_training_timesteps_is_refused(tiny_weights, tmp_path, frontal):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    (weights / "sampling.json").write_text(json.dumps({"coarse_steps": 5000, "fine_steps": 4, "fine_strength": 0.5}))
    proc = axon("reconstruct", "--frontal", frontal, "--out", tmp_path / "o.nrrd", "--weights", weights,
                "--device", "cpu", "--precision", "fp32")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sampling.json" in proc.stderr and "training timesteps" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.nrrd").exists()


def test_the_pipeline_refuses_more_steps_than_its_schedulers_have(tiny_weights):
    from axonct.errors import AxonInputError
    from axonct.pipeline.reconstruction import AxonPipeline

    pipe = AxonPipeline.load(tiny_weights, "cpu", precision="fp32")
    limit = pipe.coarse.scheduler.num_train_timesteps
    pipe.check_steps(limit)
    with pytest.raises(AxonInputError, match="training timesteps"):
        pipe.check_steps(limit + 1)
    with pytest.raises(AxonInputError, match="training timesteps"):
        pipe.work_plan(steps=limit + 1)


@pytest.mark.parametrize("args", [
    ["demo", "--weights", "nowhere", "--out", "o"],
    ["drr", "--ct", "missing.nii.gz", "--out", "o"],
    ["prepare", "--ct", "missing", "--out", "o"],
    ["train", "coarse", "--data", "missing", "--out", "o"],
    ["reconstruct", "--frontal", "missing.png", "--out", "o.nrrd"],
    ["evaluate", "--pred", "missing.nrrd", "--gt", "missing.nii.gz", "--montage", "o.png"],
    ["benchmark", "pipeline", "--config", "nope", "--json", "o.json"],
    ["gallery", "--real", "missing.png", "--out", "o.png"],
    ["synth", "--ct", "missing.nii.gz", "--out", "o", "--count", "1"],
    ["fetch-data", "--dir", "a_file"],
], ids=lambda a: a[0])
def test_every_command_refuses_a_missing_input_in_one_line_and_writes_nothing(tmp_path, args):
    (tmp_path / "a_file").write_text("")
    proc = axon(*args, cwd=tmp_path)
    assert_one_line_refusal(proc, f"axon {args[0]}: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
