"""The Python packages the engine needs, and which of them are missing (without importing any).

torch is special: in Slicer it must come from the PyTorch extension (PyTorchUtils picks the build
that matches the GPU); everything else is installed with pip only when missing, so nothing Slicer
ships (numpy, SimpleITK, pydicom, ...) is ever replaced.
"""

from __future__ import annotations

import importlib.util

TORCH_REQUIREMENT = ">=2.3"

# import name -> pip requirement (kept in line with pyproject.toml: dependencies + the train extra,
# which holds the model code's run-time needs; Testing/slicer checks the two agree)
ENGINE_PACKAGES = {
    "torch": "torch" + TORCH_REQUIREMENT,
    "numpy": "numpy>=1.24",
    "SimpleITK": "SimpleITK>=2.3",
    "pydicom": "pydicom>=2.4",
    "PIL": "pillow>=10",
    "scipy": "scipy>=1.10",
    "tqdm": "tqdm>=4.60",
    "monai": "monai>=1.4",
    "einops": "einops>=0.7",
    "safetensors": "safetensors>=0.4",
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
