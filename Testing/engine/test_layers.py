"""The engine's layers: imports point downwards only, inference needs no training, data, tools or app
code, platform-only modules are not needed to reconstruct (Windows has no `resource`), the command
line parses without torch, and a guided sampling step keeps every tensor on the volume's device.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "AXONReconstruction" / "axonct"

LAYERS = ("core", "transforms", "io", "physics", "models", "guidance", "pipeline", "data", "training", "tools",
          "app")
"""Lowest first: a module may import its own layer or a lower one. Core = the top-level modules.
transforms (pure image preprocessing) sits below io and physics: the realism simulation (physics)
normalises with the same rule as the model views."""
INFERENCE = ("core", "transforms", "io", "physics", "models", "guidance", "pipeline")
PLATFORM_ONLY = ("resource", "fcntl", "termios", "grp")
"""POSIX-only modules Windows lacks (the Slicer platform most users have)."""


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PKG / parts[1]).is_dir()) else "core"


def _module_name(path: Path) -> str:
    name = "axonct." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_edges() -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import of an axonct module, lazy ones included."""
    edges = []
    for path in sorted(PKG.rglob("*.py")):
        me = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = me.split(".")[: -node.level] if not path.name == "__init__.py" else \
                        me.split(".")[: len(me.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target == "axonct":
                    names = [f"axonct.{a.name}" for a in node.names]
                else:
                    names = [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges += [(me, n, node.lineno) for n in names if n == "axonct" or n.startswith("axonct.")]
    return edges


def test_every_subpackage_is_a_known_layer():
    subpackages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages == set(LAYERS) - {"core"}


def test_imports_point_down_the_layers():
    wrong = [f"{a} (line {line}) imports {b}: {_layer(a)} -> {_layer(b)}" for a, b, line in import_edges()
             if LAYERS.index(_layer(b)) > LAYERS.index(_layer(a))]
    assert not wrong, "imports that point up the layers:\n" + "\n".join(wrong)


def test_inference_imports_nothing_from_data_training_tools_or_app():
    wrong = [f"{a} imports {b}" for a, b, _ in import_edges()
             if _layer(a) in INFERENCE and _layer(b) not in INFERENCE]
    assert not wrong, "\n".join(wrong)


def test_the_networks_import_no_file_reading():
    """models/ takes arrays and tensors: its preprocessing comes from transforms, never from io."""
    wrong = [f"{a} (line {line}) imports {b}" for a, b, line in import_edges()
             if _layer(a) == "models" and _layer(b) == "io"]
    assert not wrong, "\n".join(wrong)


def test_the_old_preprocessing_module_keeps_its_one_importer():
    """io.radiograph_preprocess only re-exports the window transforms for pipeline/framing.py (frozen
    while a training run uses it); new code imports axonct.transforms."""
    users = sorted({a for a, b, _ in import_edges() if b == "axonct.io.radiograph_preprocess"})
    assert users in ([], ["axonct.pipeline.framing"]), users


def test_the_layer_test_sees_a_wrong_arrow(tmp_path, monkeypatch):
    """The checker itself: an upward import planted in a copy of a module is found."""
    fake = tmp_path / "axonct"
    (fake / "physics").mkdir(parents=True)
    (fake / "physics" / "__init__.py").write_text("")
    (fake / "physics" / "drr.py").write_text("def f():\n    from axonct.tools.benchmark import machine_info\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    assert [(a, b) for a, b, _ in import_edges()] == [("axonct.physics.drr", "axonct.tools.benchmark")]


_HIDE = """
import importlib.abc, sys
HIDDEN = set({hidden!r})
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"{{name}} is hidden (a platform-only module)")
for name in list(sys.modules):
    if name.split(".")[0] in HIDDEN:
        del sys.modules[name]
sys.meta_path.insert(0, Hide())
"""


def test_reconstruct_runs_with_platform_only_modules_hidden(tiny_weights, tmp_path):
    """`resource` (Unix only) once came in through the benchmark module: `axon reconstruct` and the
    Slicer panel failed on Windows. Here the whole job runs with such modules unimportable."""
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "f.png")
    code = _HIDE.format(hidden=PLATFORM_ONLY) + (
        "from axonct.app.cli import main\n"
        f"rc = main(['reconstruct', '--frontal', {str(tmp_path / 'f.png')!r}, '--out', {str(tmp_path / 'r.nrrd')!r},"
        f" '--weights', {str(tiny_weights)!r}, '--device', 'cpu', '--steps', '1', '--precision', 'fp32'])\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in HIDDEN)\n"
        "assert not leaked, leaked\n"
        "sys.exit(rc)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "r.nrrd").is_file()


def test_the_command_line_parses_without_torch():
    """Building the parser (every `axon ... --help`) loads no torch, numpy or SimpleITK."""
    code = ("import sys\n"
            "from axonct.app.cli import build_parser\n"
            "build_parser()\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'SimpleITK', 'scipy') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", ["axonct.options", "axonct.errors", "axonct.app.protocol"])
def test_front_end_modules_are_torch_free(module):
    """What the Slicer GUI process imports to build a job and follow it must not load the engine."""
    code = f"import sys\nsys.modules['torch'] = None\nsys.modules['numpy'] = None\nimport {module}\n"
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_of_a_guided_step_is_on_the_volume_device(device):
    """Both guidances (Stage I line search, Stage II CG) on a volume on ``device``: every tensor any
    torch op sees or makes during the step is on that device (a CPU projector output times a CUDA
    mask would fail on a GPU; on a CPU-only machine this checks the bookkeeping, on CUDA the move)."""
    import numpy as np
    from torch.overrides import TorchFunctionMode

    from axonct.config import data_preset
    from axonct.guidance.consistency import ConsistencyConfig, ViewConsistency
    from axonct.models.brownian_bridge import BrownianBridgeScheduler
    from axonct.presets import model_preset

    data = data_preset("tiny")
    grid = data.diffusion_grid(2)
    p = data.geometry.detector_pixels
    yy, xx = np.mgrid[-1:1:p * 1j, -1:1:p * 1j]
    views = np.stack([np.clip(1 - xx**2 - yy**2, 0, 1)] * 2).astype(np.float32)
    checker = ViewConsistency(views, np.ones(2, np.float32), grid, data.geometry, ConsistencyConfig())
    cfg = model_preset("tiny").coarse
    bridge = checker.bridge_guidance(BrownianBridgeScheduler(cfg.num_train_timesteps, cfg.m_min, cfg.m_max,
                                                             cfg.variance_scale))
    x0 = torch.rand(2, 1, grid.size, grid.size, grid.size, generator=torch.Generator().manual_seed(0)).to(device)
    x0 = x0 * 1.6 - 0.8
    seen: set[str] = set()

    class Devices(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in [*args, *(kwargs or {}).values(), *(out if isinstance(out, (tuple, list)) else [out])]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    seen.add(t.device.type)
            return out

    checker.calibrate(((x0[:, 0] + 1) / 2).clamp(0, 1).to(device))  # the fit itself runs on the CPU, once
    with Devices():
        for stage, guide in (("coarse", bridge), ("fine", checker.cg_guidance())):
            checker.stage, checker.calls = stage, 1  # calibrated above: the step itself is what is checked
            out = guide(x0, 0, 10, 400)
    assert seen == {torch.device(device).type}, seen
    assert out.device.type == torch.device(device).type and torch.isfinite(out).all()
