"""The extension's description files point at screenshots and an icon that exist in the repository,
and the catalog entry uses only what Slicer's extension catalog schema (v1.0.1) allows."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMA_KEYS = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier"}


def _cmake_value(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (REPO / "CMakeLists.txt").read_text())
    assert match, f"{name} missing from CMakeLists.txt"
    return match.group(1)


def _s4ext() -> dict:
    return dict(line.split(" ", 1) for line in (REPO / "AXON.s4ext").read_text().splitlines()
                if line and not line.startswith("#"))


def test_screenshot_urls_are_raw_github_files_of_this_repository():
    homepage = _cmake_value("EXTENSION_HOMEPAGE")
    owner_repo = homepage.removeprefix("https://github.com/")
    raw = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    urls = _cmake_value("EXTENSION_SCREENSHOTURLS").split()
    assert urls and urls == _s4ext()["screenshoturls"].split()
    for url in urls + [_cmake_value("EXTENSION_ICONURL")]:
        assert url.startswith(raw), url
        path = REPO / url.removeprefix(raw)
        assert path.is_file(), f"{url} points at {path}, which does not exist (run scripts/make_screenshots.sh)"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 500_000, path
    assert urls[0].endswith("Resources/Screenshots/AXONReconstruction-1.png")


def test_catalog_entry_and_legacy_description_agree():
    entry = json.loads((REPO / "AXON.json").read_text())
    assert set(entry) <= SCHEMA_KEYS and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert 1 <= entry["tier"] <= 5 and entry["scm_url"].startswith(_cmake_value("EXTENSION_HOMEPAGE"))
    s4ext = _s4ext()
    assert s4ext["homepage"] == _cmake_value("EXTENSION_HOMEPAGE")
    assert s4ext["iconurl"] == _cmake_value("EXTENSION_ICONURL")
    assert s4ext["scmrevision"] == entry["scm_revision"]
    assert not re.match("slicer", "AXON", re.I)  # the index refuses extension names starting with "Slicer"


def test_module_cmake_builds_the_scripted_module_with_its_self_test():
    cmake = (REPO / "AXONReconstruction" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in cmake and "WITH_GENERIC_TESTS" in cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    module = (REPO / "AXONReconstruction" / "AXONReconstruction.py").read_text()
    for cls in ("(ScriptedLoadableModule)", "(ScriptedLoadableModuleWidget, VTKObservationMixin)",
                "(ScriptedLoadableModuleLogic, ReconstructionLogic)", "(ScriptedLoadableModuleTest)"):
        assert cls in module, cls
    assert "@parameterNodeWrapper" in module and 'slicer.app.connect("startupCompleted()", registerSampleData)' in module
