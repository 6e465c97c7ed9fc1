"""Fixtures for the Slicer module tests: real MRML from `slicer-core` (pip), no Slicer application.

These tests need `slicer-core` and `PySide6-Essentials` (pinned in requirements/lock.txt; CI runs them
with the engine suite, pyproject's testpaths). A conftest's fixtures do not reach a sibling folder, so
the thin fixtures are repeated here; what they build (synthetic cache, tiny weights) comes from
Testing/engine/synthetic.py. Qt runs offscreen (set here: CI has no display).
"""

from __future__ import annotations

import sys
from pathlib import Path

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

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
    """The engine suite's tiny weights without the baseline CNN, which `axon reconstruct` does not use."""
    import torch

    from synthetic import train_tiny_weights

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: see the engine suite's `one_thread`
    try:
        return train_tiny_weights(tiny_cache, tmp_path_factory.mktemp("tiny_runs"), with_baseline=False)
    finally:
        torch.set_num_threads(threads)


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
