"""Fixtures for the Slicer module tests: real MRML from `slicer-core` (pip), no Slicer application.

These tests need `slicer-core` and `PySide6-Essentials`, which CI does not install yet, so they live
apart from Testing/engine. The tiny-weights fixtures are the engine suite's (Testing/engine/conftest.py),
copied here because a conftest's fixtures do not reach a sibling folder; the synthetic data helpers are
imported from Testing/engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "AXONReconstruction", REPO / "Testing" / "engine"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A tiny-preset cache of 8 synthetic chests (6 train, 2 val), as in the engine suite."""
    from synthetic import synthetic_cache

    return synthetic_cache(tmp_path_factory.mktemp("tiny"), n_cases=8)


@pytest.fixture(scope="session")
def tiny_weights(tiny_cache, tmp_path_factory) -> Path:
    """A weights folder with the three inference stages trained a few steps at tiny scale
    (plumbing, not quality); the engine suite's fixture without the baseline CNN, which
    `axon reconstruct` does not use."""
    import shutil

    import torch

    from axonct.presets import model_preset
    from axonct.training import train

    root = tmp_path_factory.mktemp("tiny_runs")
    weights = root / "weights"
    weights.mkdir()

    def preset(steps):
        p = model_preset("tiny")
        p.train.steps, p.train.validate_every, p.train.val_cases, p.train.controlnet_cond_steps = steps, 10**6, 1, 2
        return p

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: see the engine suite's `one_thread`
    try:
        for stage, steps, extra in (("coarse", 4, {}), ("prior", 4, {}), ("sr", 4, {}),
                                    ("controlnet", 2, {"prior_dir": str(root / "prior"),
                                                       "coarse_dir": str(root / "coarse")})):
            train(stage, tiny_cache, preset(steps), root / stage, device="cpu", progress=False, **extra)
            for suffix in (".safetensors", ".json"):
                shutil.copy(root / stage / f"{stage}{suffix}", weights)
    finally:
        torch.set_num_threads(threads)
    return weights


@pytest.fixture
def scene():
    """A fresh MRML scene installed as `slicer.mrmlScene` (slicer-core has no default scene)."""
    slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed `slicer` package is not slicer-core")
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s
    yield s
    s.Clear(1)
    del slicer.mrmlScene
