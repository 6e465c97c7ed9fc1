"""The Python packages the engine needs, and which of them are missing (without importing any).

torch is special: in Slicer it comes from the PyTorch extension (PyTorchUtils picks the build that
matches the GPU: CUDA or CPU). Everything else is installed with pip only when missing, at the exact
versions the engine is tested with (requirements/lock.txt; Testing/slicer checks the two agree), so
nothing Slicer ships (numpy, SimpleITK, pydicom, Pillow, ...) is ever replaced.
"""

from __future__ import annotations

import importlib.util

TORCH_REQUIREMENT = "==2.13.0"

# import name -> pip requirement (pyproject.toml's dependencies + the train extra, which holds the
# model code's run-time needs, pinned as in requirements/lock.txt)
ENGINE_PACKAGES = {
    "torch": "torch" + TORCH_REQUIREMENT,
    "numpy": "numpy==2.4.6",
    "SimpleITK": "simpleitk==2.5.7",
    "pydicom": "pydicom==3.0.2",
    "PIL": "pillow==13.0.0",
    "scipy": "scipy==1.17.1",
    "tqdm": "tqdm==4.70.1",
    "monai": "monai==1.6.1",
    "einops": "einops==0.8.2",
    "safetensors": "safetensors==0.8.0",
}


def missingPackages() -> dict[str, str]:
    """{import name: pip requirement} of every engine package that is not importable."""
    missing = {}
    for module, requirement in ENGINE_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing[module] = requirement
    return missing


def pipRequirements(missing: dict[str, str]) -> list[str]:
    """What pip installs for `missing` (from `missingPackages`): everything but torch, which the
    PyTorch extension installs first (so monai's torch requirement is already met and pip never pulls
    a CPU-only or different CUDA build of torch)."""
    return [requirement for module, requirement in missing.items() if module != "torch"]
