"""Compute precision per machine (runtime.resolve_precision), the device resolver, batched samples,
and the pipeline benchmark's sample handling.

bf16 autocast is 2-3x faster on CPUs with native bf16 and 10-200x slower on AVX2-only CPUs (most
laptops); `auto` must measure, not assume. The AVX2 case is emulated on any x86 machine by capping
oneDNN and ATen with environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from axonct.errors import AxonInputError
from axonct.runtime import DeviceError, Precision, cpu_bf16_probe, normalise_precision, resolve_device, \
    resolve_precision

REPO = Path(__file__).resolve().parents[2]
AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
X86 = os.uname().machine in ("x86_64", "AMD64") if hasattr(os, "uname") else True


def _python(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"), **env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(not X86, reason="the AVX2 cap emulates an x86 CPU without native bf16")
def test_auto_picks_fp32_on_a_cpu_capped_to_avx2(tmp_path):
    code = ("import json, torch; from axonct.runtime import resolve_precision; "
            "p = resolve_precision('auto', 'cpu', use_cache=False); "
            "print(json.dumps({'cap': torch.backends.cpu.get_cpu_capability(), **p.to_dict()}))")
    proc = _python(code, {**AVX2_CAP, "AXON_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cap"] == "AVX2"  # the cap took effect on this torch build
    assert out["name"] == "fp32", out
    assert "slower" in out["reason"] or "only" in out["reason"]


def test_probe_is_cached_per_machine_and_per_isa_cap(tmp_path):
    cache = tmp_path / "probe.json"
    first = cpu_bf16_probe(cache)
    assert not first["from_cache"] and first["fp32_s"] > 0 and first["bf16_s"] > 0
    again = cpu_bf16_probe(cache)
    assert again["from_cache"] and again["fp32_s"] == first["fp32_s"]
    # another ISA cap is another machine as far as bf16 speed goes: a new entry, measured afresh
    code = (f"from axonct.runtime import cpu_bf16_probe; from pathlib import Path; "
            f"print(cpu_bf16_probe(Path({str(cache)!r}))['from_cache'])")
    proc = _python(code, AVX2_CAP)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert len(json.loads(cache.read_text())) == 2


def test_explicit_precisions_and_old_amp_spellings():
    assert resolve_precision("fp32", "cpu").name == "fp32"
    p = resolve_precision("bf16", "cpu")
    assert p.name == "bf16" and p.dtype == torch.bfloat16 and "asked for" in p.reason
    assert normalise_precision("off") == "fp32" and normalise_precision("BF16") == "bf16"
    with pytest.raises(AxonInputError, match="--precision"):
        normalise_precision("fp16")
    auto = resolve_precision("auto", "cpu")
    assert auto.name in ("bf16", "fp32") and auto.reason.startswith("auto:")
    with Precision("fp32", "x").autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with Precision("bf16", "x").autocast("cpu"):
        assert torch.is_autocast_enabled("cpu")


def test_device_resolver_errors_are_input_errors():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="--device 'foo' is not a device"):
        resolve_device("foo")
    assert issubclass(DeviceError, AxonInputError)  # the CLI turns it into exit code 2
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("device,words", [("foo", ["--device", "foo"]), ("cuda:99", ["--device", "cuda"])])
def test_cli_bad_device_is_one_line_and_exit_2(tmp_path, device, words):
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"))
    png = tmp_path / "f.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(png)
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "reconstruct", "--frontal", str(png),
                           "--out", str(tmp_path / "r.nrrd"), "--device", device],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def test_cli_refuses_an_unknown_precision(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"))
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "reconstruct", "--frontal", "x.png", "--out",
                           str(tmp_path / "r.nrrd"), "--precision", "fp16"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--precision" in proc.stderr and "Traceback" not in proc.stderr


def test_old_cards_with_amp_still_load():
    from axonct.presets import ModelPreset, model_preset

    d = model_preset("tiny").to_dict()
    d["train"].pop("precision")
    d["train"]["amp"] = "off"
    assert ModelPreset.from_dict(d).train.precision == "fp32"


@pytest.fixture(scope="module")
def tiny_inputs(tiny_cache):
    drr = np.load(next((tiny_cache / "cases").iterdir()) / "drr.npy")
    views = np.stack([(d - d.min()) / (d.max() - d.min()) for d in drr]).astype(np.float32)
    return views, np.ones(2, np.float32)


@pytest.mark.slow
def test_fp32_and_bf16_reconstructions_agree(tiny_weights, tiny_inputs, one_thread):
    """Same inputs, seed and weights in both precisions: the HU volumes agree closely.

    Tolerance (stated in README): mean |difference| below 1 % of the HU range (25 HU) and
    correlation above 0.995 (measured on tiny weights: 2.2 HU, 1.0000). bf16 keeps 8 bits of mantissa inside the networks only; the samplers,
    the guidance and the statistics stay in float32. Under the AVX2 cap bf16 is slow, hence steps=2."""
    from axonct.guidance.consistency import ConsistencyConfig
    from axonct.pipeline.reconstruction import AxonPipeline

    views, mask = tiny_inputs
    out = {}
    for name in ("fp32", "bf16"):
        pipe = AxonPipeline.load(tiny_weights, "cpu", precision=name)
        assert pipe.precision.name == name
        out[name] = pipe.reconstruct(views, mask, steps=2, seed=3, consistency=ConsistencyConfig()).mean
    grid = pipe.preset.data.grid
    hu_range = grid.hu_max - grid.hu_min
    diff = np.abs(out["fp32"] - out["bf16"]).mean() * hu_range
    corr = np.corrcoef(out["fp32"].ravel(), out["bf16"].ravel())[0, 1]
    print(f"fp32 vs bf16: mean |diff| {diff:.1f} HU, correlation {corr:.4f}")
    assert diff < 0.01 * hu_range and corr > 0.995, (diff, corr)


def test_batched_samples_equal_one_at_a_time(tiny_weights, tiny_inputs, one_thread):
    """Sample k draws its noise from its own generator, so a batch of K gives the K samples one at a
    time would give (a GPU runs them as one batch); mean and std are streamed, not stacked."""
    from axonct.pipeline.reconstruction import AxonPipeline

    views, mask = tiny_inputs
    pipe = AxonPipeline.load(tiny_weights, "cpu", precision="fp32")
    one = pipe.reconstruct(views, mask, steps=2, samples=3, seed=5, batch_size=1)
    assert pipe.last_batch == 1
    batched = pipe.reconstruct(views, mask, steps=2, samples=3, seed=5, batch_size=3)
    assert pipe.last_batch == 3
    np.testing.assert_allclose(batched.mean, one.mean, atol=2e-4)
    np.testing.assert_allclose(batched.std, one.std, atol=2e-4)
    assert one.std.shape == one.mean.shape and one.std.max() > 0
    for cut in ("coarse", "fine", "sr"):
        np.testing.assert_allclose(batched.cuts[cut], one.cuts[cut], atol=2e-4)


def test_running_moments_match_numpy():
    from axonct.pipeline.reconstruction import RunningMoments

    gen = np.random.default_rng(0)
    data = gen.normal(size=(7, 1, 4, 4, 4)).astype(np.float32)
    rm = RunningMoments()
    for chunk in (data[:2], data[2:3], data[3:]):
        rm.add(torch.from_numpy(chunk))
    np.testing.assert_allclose(rm.mean.numpy(), data.mean(0, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(rm.std().numpy(), data.std(0, ddof=1, keepdims=True), atol=1e-6)


def test_benchmark_pipeline_samples_keep_sr_input_at_the_diffusion_grid(one_thread):
    """`benchmark pipeline --samples K` ran SR on SR's own output (K=4 peaked at 103 GB on a GPU).
    Each stage must read the previous stage's output of the same samples."""
    from axonct.tools.benchmark import benchmark_pipeline
    from axonct.presets import model_preset

    preset = model_preset("tiny")
    result = benchmark_pipeline("tiny", steps=1, device="cpu", samples=2, precision="fp32")
    assert result["output_shape"][-3:] == [preset.data.grid.size] * 3
    assert result["samples"] == 2 and result["precision"]["name"] == "fp32"
    assert [r["stage"] for r in result["rows"]] == ["coarse", "fine", "sr", "total"]
    assert all(r["seconds"] is not None and r["seconds"] >= 0 for r in result["rows"])


def test_reconstruct_report_names_device_and_precision(tiny_weights, tmp_path):
    from PIL import Image

    png = tmp_path / "f.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(png)
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"), OMP_NUM_THREADS="1")
    out = tmp_path / "r.nrrd"
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "reconstruct", "--frontal", str(png), "--out",
                           str(out), "--weights", str(tiny_weights), "--device", "cpu", "--steps", "1",
                           "--precision", "fp32", "--consistency", "off"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r_report.json").read_text())
    assert report["device"] == "cpu"
    assert report["precision"]["name"] == "fp32" and report["precision"]["reason"]
    assert "precision fp32" in proc.stdout
