"""Rewrite the file lists in AXONReconstruction/CMakeLists.txt from the module folder.

MODULE_PYTHON_SCRIPTS: every .py below AXONReconstruction/ (module script, its Lib, the engine).
MODULE_PYTHON_RESOURCES: every file below AXONReconstruction/Resources/ (icons, .ui) and the engine's
bundled weights (axonct/weights, package data of the wheel too).
Run after adding or removing a file; Testing/engine/test_packaging.py fails until you do.
"""

import re
from pathlib import Path

module = Path(__file__).resolve().parents[1] / "AXONReconstruction"
cmake = module / "CMakeLists.txt"
scripts = sorted(p.relative_to(module).as_posix() for p in module.rglob("*.py")
                 if "egg-info" not in p.as_posix() and "__pycache__" not in p.as_posix())
resource_dirs = (module / "Resources", module / "axonct" / "weights")  # weights live in the engine package
resources = sorted(p.relative_to(module).as_posix() for d in resource_dirs for p in d.rglob("*") if p.is_file())
text = cmake.read_text()
for variable, files in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
    block = f"set({variable}\n" + "".join(f"  {f}\n" for f in files) + "  )"
    text = re.sub(rf"set\({variable}.*?\)", lambda _: block, text, count=1, flags=re.S)
cmake.write_text(text)
print(f"{len(scripts)} Python files and {len(resources)} resources listed in {cmake}")
