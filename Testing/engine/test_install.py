"""A non-editable install works outside the checkout: the wheel carries the engine and its bundled
weights, and `axon reconstruct` runs from another folder with nothing from the checkout on its path.

The wheel is built from this tree and installed with `--no-deps` into a fresh virtual environment
whose only other path is the test environment's site-packages (the dependencies, already pinned),
so no download is needed and the checkout itself is invisible to the installed command.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    # Build from a copy without build/ or egg-info folders: a stale build/lib in a working checkout would
    # otherwise slip modules that no longer exist into the wheel (and hide ones that are missing).
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".data", "out", "runs", "gpu_wheels"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
          "--disable-pip-version-check", "-w", str(wheels), str(source)])
    wheel = next(wheels.glob("axon_xray2ct-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    vpython = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = Path(_run([str(vpython), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                   .stdout.strip())
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "axon_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(vpython), "install", "--no-deps", "--quiet",
          "--disable-pip-version-check", str(wheel)])
    return {"wheel": wheel, "venv": venv, "bin": bindir, "python": vpython, "purelib": purelib, "root": root}


def _clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AXON_DATA_DIR", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp), AXON_CACHE_DIR=str(tmp / "cache"), OMP_NUM_THREADS="1")
    return env


def test_wheel_carries_engine_weights_and_no_checkout_files(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for stage in ("coarse", "controlnet", "sr"):
        assert f"axonct/weights/cpu/{stage}.safetensors" in names and f"axonct/weights/cpu/{stage}.json" in names
    assert "axonct/weights/cpu/MODEL_CARD.md" in names
    engine = REPO / "AXONReconstruction"
    sources = {p.relative_to(engine).as_posix() for p in (engine / "axonct").rglob("*.py")
               if "__pycache__" not in p.parts}
    shipped = {n for n in names if n.startswith("axonct/") and n.endswith(".py")}
    assert shipped == sources, ("wheel and source tree differ", sorted(shipped ^ sources))
    assert "axonct/app/cli.py" in shipped and "axonct/pipeline/reconstruction.py" in shipped
    assert not [n for n in names if n.startswith(("Testing/", "scripts/", "AXONWeb/"))]
    for package, root in (("AXONReconstructionLib", engine), ("axonweb", REPO / "AXONWeb")):  # what `axon app` runs
        sources = {p.relative_to(root).as_posix() for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts}
        assert {n for n in names if n.startswith(package + "/")} == sources, (package, sources)
    meta = next(n for n in names if n.endswith("METADATA"))
    requires = [line for line in zipfile.ZipFile(installed["wheel"]).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    for base in ("torch", "monai", "safetensors", "einops", "SimpleITK", "pydicom"):  # what inference imports
        assert any(base.lower() in r.lower() for r in requires), (base, requires)


def test_installed_axon_reconstructs_from_another_folder(installed, tmp_path):
    """The demo's kind of inputs (frontal + lateral PNGs), bundled weights found inside the install."""
    from PIL import Image

    gen = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:128j, -1:1:128j]
    for name in ("frontal", "lateral"):
        body = np.clip(1.2 - (xx / 0.8) ** 2 - (yy / 0.9) ** 2, 0, 1)
        img = (body * 50000 + gen.normal(0, 500, body.shape)).clip(0, 65535).astype(np.uint16)
        Image.fromarray(img).save(tmp_path / f"{name}.png")
    work = tmp_path / "elsewhere"
    work.mkdir()
    axon = installed["bin"] / ("axon.exe" if os.name == "nt" else "axon")
    env = _clean_env(tmp_path)
    where = _run([str(installed["python"]), "-c", "import axonct, axonct.pipeline.loading as w; "
                  "print(axonct.__file__); print(w.default_weights_dir())"], cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(installed["purelib"]), where
    assert Path(where[1]).is_relative_to(installed["purelib"]) and Path(where[1], "coarse.safetensors").is_file()
    proc = _run([str(axon), "reconstruct", "--frontal", str(tmp_path / "frontal.png"), "--lateral",
                 str(tmp_path / "lateral.png"), "--out", "recon.nrrd", "--steps", "2", "--device", "cpu"],
                cwd=work, env=env)
    assert (work / "recon.nrrd").is_file()
    report = json.loads((work / "recon_report.json").read_text())
    assert Path(report["weights"]).is_relative_to(installed["purelib"])
    bundled = json.loads((Path(where[1]) / "coarse.json").read_text())["config"]["name"]
    assert report["preset"] == bundled and report["precision"]["name"] in ("bf16", "fp32")
    assert "precision" in proc.stdout


def test_installed_package_finds_sample_data_outside_the_checkout(installed, tmp_path):
    """Outside a checkout the sample data lives in AXON_DATA_DIR or the user cache, never beside the package."""
    env = _clean_env(tmp_path)
    code = "from axonct.io.sample_data import data_dir; print(data_dir())"
    assert _run([str(installed["python"]), "-c", code], cwd=tmp_path, env=env).stdout.strip() == \
        str(tmp_path / ".cache" / "axonct")
    env["AXON_DATA_DIR"] = str(REPO / ".data")
    assert _run([str(installed["python"]), "-c", code], cwd=tmp_path, env=env).stdout.strip() == str(REPO / ".data")
