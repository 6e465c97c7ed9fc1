"""The CUDA paths, wherever CUDA exists (skipped on CPU-only machines; `scripts/gpu_check.sh` runs
them on a lent GPU together with the benchmarks).

GPU users are the main users of the paper preset, so these check correctness, not speed: the
default Reconstruct (consistency on) keeps every tensor on the GPU, K samples run as one batch and
give what K single runs give, and bf16 and fp32 agree.
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

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def views():
    yy, xx = np.mgrid[-1:1:128j, -1:1:128j]
    body = np.clip(1.2 - (xx / 0.8) ** 2 - (yy / 0.9) ** 2, 0, 1).astype(np.float32)
    lungs = np.exp(-(((np.abs(xx) - 0.35) / 0.2) ** 2 + (yy / 0.5) ** 2)).astype(np.float32)
    v = np.stack([body - 0.4 * lungs, body]).clip(0, 1)
    return v, np.ones(2, np.float32)


def test_guided_step_stays_on_the_gpu(views):
    from axonct.config import data_preset
    from axonct.guidance.consistency import ConsistencyConfig, ViewConsistency

    data = data_preset("cpu")
    grid = data.diffusion_grid(2)
    checker = ViewConsistency(*views, grid, data.geometry, ConsistencyConfig())
    from axonct.guidance.lung_fields import LungFieldGuidance

    p = checker.observed[0].shape[-1]
    fields = np.zeros((2, p, p), np.float32)
    fields[:, p // 4: 3 * p // 4, p // 8: 7 * p // 8] = 1.0
    checker.lung_fields = LungFieldGuidance(fields, checker.projector, grid)  # the lung-field step too
    x0 = (torch.rand(2, 1, grid.size, grid.size, grid.size, device="cuda") * 2 - 1)
    for guide in (checker.bridge_guidance(_bridge_scheduler()), checker.cg_guidance()):
        out = guide(x0, 0, 10, 500)
        assert out.device == x0.device and out.shape == x0.shape and out.dtype == x0.dtype
        assert torch.isfinite(out).all()
    assert checker.projector.device.type == "cuda" and checker.targets.device.type == "cuda"
    assert checker.lung_fields.inside.device.type == "cuda" and "lung_field_violation" in checker.history[-1]


def _bridge_scheduler():
    from axonct.models.brownian_bridge import BrownianBridgeScheduler
    from axonct.presets import model_preset

    cfg = model_preset("cpu").coarse
    return BrownianBridgeScheduler(cfg.num_train_timesteps, cfg.m_min, cfg.m_max, cfg.variance_scale)


def test_batched_samples_on_gpu_match_single_runs(views):
    from axonct.guidance.consistency import ConsistencyConfig
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.pipeline.loading import default_weights_dir

    pipe = AxonPipeline.load(default_weights_dir(), "cuda", precision="fp32")
    one = pipe.reconstruct(*views, steps=4, samples=2, seed=1, batch_size=1, consistency=ConsistencyConfig())
    both = pipe.reconstruct(*views, steps=4, samples=2, seed=1, consistency=ConsistencyConfig())
    assert pipe.last_batch == 2  # all samples in one batch on a GPU
    assert np.abs(both.mean - one.mean).mean() < 2e-3  # cuDNN picks batch-dependent kernels: close, not equal
    assert both.std is not None and both.std.shape == both.mean.shape


def test_bf16_and_fp32_agree_on_gpu(views):
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.pipeline.loading import default_weights_dir

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    out = {}
    for name in ("fp32", "bf16"):
        pipe = AxonPipeline.load(default_weights_dir(), "cuda", precision=name)
        out[name] = pipe.reconstruct(*views, steps=6, seed=2).mean
    hu = np.abs(out["fp32"] - out["bf16"]).mean() * 2500
    assert hu < 25 and np.corrcoef(out["fp32"].ravel(), out["bf16"].ravel())[0, 1] > 0.995


def test_reconstruct_cli_on_cuda_end_to_end(views, tmp_path):
    """Inputs, three stages, consistency (default on), outputs and report, on the bundled weights."""
    from PIL import Image

    for i, name in enumerate(("frontal", "lateral")):
        Image.fromarray((views[0][i] * 65535).astype(np.uint16)).save(tmp_path / f"{name}.png")
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"))
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "reconstruct", "--frontal", str(tmp_path / "frontal.png"),
                           "--lateral", str(tmp_path / "lateral.png"), "--out", str(tmp_path / "r.nrrd"),
                           "--device", "cuda", "--samples", "2"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r_report.json").read_text())
    assert report["device"].startswith("cuda") and report["sample_batch"] == 2
    assert report["consistency"] != "off" and report["consistency"]["views"]["frontal"]["relative_residual"] >= 0
    assert report["precision"]["name"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert (tmp_path / "r.nrrd").is_file() and (tmp_path / "r_std.nrrd").is_file()
