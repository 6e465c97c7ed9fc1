"""Extension packaging: the module's CMakeLists installs every engine file, and the metadata agree.

A Python file missing from the CMake list is silently absent from the installed extension (the
classic packaging bug); a listed file that does not exist is a fatal CMake error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "AXONReconstruction"


def _cmake_list(text: str, variable: str) -> list[str]:
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert m, f"{variable} not found"
    return [t for t in m.group(1).split() if not t.startswith("#")]


def test_every_module_file_is_installed_and_every_listed_file_exists():
    text = (MODULE / "CMakeLists.txt").read_text()
    name = re.search(r"set\(MODULE_NAME (\w+)\)", text).group(1)
    listed = {f.replace("${MODULE_NAME}", name) for f in
              _cmake_list(text, "MODULE_PYTHON_SCRIPTS") + _cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    python = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py") if "egg-info" not in p.as_posix()}
    resources = {p.relative_to(MODULE).as_posix() for d in (MODULE / "Resources", MODULE / "axonct" / "weights")
                 for p in d.rglob("*") if p.is_file()}
    missing = sorted((python | resources) - listed)
    assert not missing, f"files missing from AXONReconstruction/CMakeLists.txt: {missing}"
    assert "axonct/pipeline/reconstruction.py" in listed and f"{name}.py" in listed
    absent = sorted(f for f in listed if not (MODULE / f).exists())
    assert not absent, f"listed in CMakeLists.txt but not in the tree: {absent}"


def test_extension_metadata_agree():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(AXON\)", cmake, re.M)
    entry = json.loads((REPO / "AXON.json").read_text())
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["build_dependencies"] == ["PyTorch"]
    category = re.search(r'EXTENSION_CATEGORY "([^"]+)"', cmake).group(1)
    s4ext = dict(line.split(" ", 1) for line in (REPO / "AXON.s4ext").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert entry["category"] == category == s4ext["category"]
    assert s4ext["depends"] == "PyTorch" and 'EXTENSION_DEPENDS "PyTorch"' in cmake
    assert s4ext["scmurl"] == entry["scm_url"]
    for f in ("AXON.json", "AXON.s4ext", "CMakeLists.txt"):
        assert b"\r\n" not in (REPO / f).read_bytes(), f"{f} must use LF line endings"
    assert (REPO / "LICENSE").exists()
    icon = re.search(r'EXTENSION_ICONURL "[^"]+/main/([^"]+)"', cmake).group(1)
    assert (REPO / icon).exists(), icon
