"""The engine's layers: imports point downwards only, inference needs no training, data, tools or app
code, platform-only modules are not needed to reconstruct (Windows has no `resource`), the command
line parses without torch, and a guided sampling step keeps every tensor on the volume's device.

Above the engine: the Slicer module (its script and Lib) imports only public engine names that exist
and loads no torch in the GUI process; scripts/ import any engine name that exists, and share code
only through helper modules (a script never imports a command).
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


# ----------------------------------------------------------------------------- the Slicer module and scripts

MODULE = REPO / "AXONReconstruction"
LIB = MODULE / "AXONReconstructionLib"
GUI_FILES = (MODULE / "AXONReconstruction.py", *sorted(LIB.glob("*.py")))
"""What the Slicer GUI process runs: the module script and its Lib. No Lib module runs in the engine
worker (that is `python -m axonct.app.cli`), so none is exempt from the torch-free rule."""
SCRIPTS = REPO / "scripts"


def _imports(path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(module, imported names, line, at module level) of every absolute import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try))
                                        for n in ast.walk(s)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno, id(node) in top) for a in node.names]
    return out


def _engine_file(module: str) -> Path | None:
    base = PKG.parent.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _defined(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (also inside top-level if/try blocks)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def stale_engine_imports(path: Path, public_only: bool) -> list[str]:
    """Imports of axonct modules or names that do not exist (left behind when something moved), and
    with ``public_only`` any private one (a leading underscore)."""
    wrong = []
    for module, names, line, _ in _imports(path):
        if module.split(".")[0] != "axonct":
            continue
        where = f"{path.relative_to(REPO)}:{line} imports {module}"
        target = _engine_file(module)
        if target is None:
            wrong.append(f"{where}: no such module")
            continue
        if public_only and any(part.startswith("_") for part in module.split(".")):
            wrong.append(f"{where}: a private module")
        for name in names:
            if _engine_file(f"{module}.{name}") is None and name not in _defined(target):
                wrong.append(f"{where}: it has no {name}")
            elif public_only and name.startswith("_"):
                wrong.append(f"{where}: {name} is private")
    return wrong


def test_the_slicer_module_imports_existing_public_engine_names():
    """The module script and its Lib sit above the whole engine: they may import any public axonct
    module (core included), nothing private, and nothing that has moved away."""
    wrong = [w for f in GUI_FILES for w in stale_engine_imports(f, public_only=True)]
    assert not wrong, "\n".join(wrong)


def _gui_import_targets() -> list[str]:
    """Every Lib module, and the engine modules the module script imports when Slicer loads it (the
    script itself needs Qt and a Slicer application, so its module-level imports are checked)."""
    lib = [f"AXONReconstructionLib.{p.stem}" for p in sorted(LIB.glob("*.py")) if p.stem != "__init__"]
    script = sorted({m for m, _, _, top in _imports(MODULE / "AXONReconstruction.py")
                     if top and m.split(".")[0] == "axonct"})
    return lib + script


@pytest.mark.parametrize("module", _gui_import_targets())
def test_the_slicer_gui_process_loads_no_torch_on_import(module):
    """Loading the panel must not load torch (seconds, gigabytes; and in Slicer torch may not be
    installed yet): engine parts that need it are imported inside the function that uses them."""
    pytest.importorskip("slicer", reason="the Lib needs slicer-core (requirements/lock.txt)")
    code = (f"import sys\nimport {module}\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('axonct'))\n")
    env = dict(os.environ, PYTHONPATH=str(MODULE))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"importing {module} loads torch (engine modules loaded then):\n{proc.stderr[-2000:]}"


def test_the_module_script_imports_no_torch_when_slicer_loads_it():
    """The module script needs Slicer to import, so its own module-level imports are read instead:
    no torch (its Lib and engine imports are imported for real above)."""
    heavy = [f"line {line}: {m}" for m, _, line, top in _imports(MODULE / "AXONReconstruction.py")
             if top and m.split(".")[0] in ("torch", "monai", "torchvision")]
    assert not heavy, heavy


def _script_files() -> list[Path]:
    return sorted(SCRIPTS.glob("*.py"))


def _is_helper(path: Path) -> bool:
    """A helper only defines things (imports, functions, classes, constants): importing it runs nothing."""
    body = ast.parse(path.read_text()).body
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
               ast.AnnAssign)
    return all(isinstance(n, allowed) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
               for n in body)


def test_scripts_import_existing_engine_names():
    """scripts/ may import anything from axonct (private helpers too: they are the engine's own
    tools), but only what exists: nothing runs the scripts in the test suite, so an import left
    behind by a move would otherwise surface only when someone next runs one."""
    wrong = [w for f in _script_files() for w in stale_engine_imports(f, public_only=False)]
    assert not wrong, "\n".join(wrong)


def test_scripts_share_code_only_through_helper_modules():
    """A script is a command (run as `python scripts/NAME.py`) or a helper the commands share
    (real_ct_runs: the real evaluation CTs; make_screenshots_panel: the panel rendered offscreen).
    A script may import a helper, never a command (importing a command runs it, or ties one command
    to another's options), and a helper imports no other script (no chains between scripts)."""
    scripts = {p.stem: p for p in _script_files()}
    wrong = []
    for path in scripts.values():
        for module, _, line, _ in _imports(path):
            other = scripts.get(module.split(".")[0])
            if other is None or other == path:
                continue
            where = f"scripts/{path.name}:{line} imports scripts/{other.name}"
            if not _is_helper(other):
                wrong.append(f"{where}, a command (its top level runs code), not a helper")
            elif _is_helper(path):
                wrong.append(f"{where}: a helper must not import another script")
    assert not wrong, "\n".join(wrong)


def test_the_script_and_module_checks_see_a_stale_import_and_a_command_import(tmp_path, monkeypatch):
    """The checkers themselves: a moved name, a private name and an import of a command are found."""
    lib = tmp_path / "lib.py"
    lib.write_text("from axonct.io.atomic import write_text\nfrom axonct.metrics import dice, _gaussian_filter\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert stale_engine_imports(lib, public_only=True) == [
        "lib.py:1 imports axonct.io.atomic: no such module", "lib.py:2 imports axonct.metrics: _gaussian_filter is private"]
    assert stale_engine_imports(lib, public_only=False) == ["lib.py:1 imports axonct.io.atomic: no such module"]
    (tmp_path / "command.py").write_text("import sys\nprint(sys.argv)\n")
    (tmp_path / "user.py").write_text('"""x"""\nfrom command import main\n')
    monkeypatch.setattr(sys.modules[__name__], "SCRIPTS", tmp_path)
    with pytest.raises(AssertionError, match="user.py:2 imports scripts/command.py, a command"):
        test_scripts_share_code_only_through_helper_modules()


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
