"""Rewrite MODULE_PYTHON_SCRIPTS in AXONReconstruction/CMakeLists.txt from the module's Python files.

Lists the module script, its Lib package and the engine (every .py below AXONReconstruction/).
Run after adding or removing a file; Testing/engine/test_packaging.py fails until you do.
"""

import re
from pathlib import Path

module = Path(__file__).resolve().parents[1] / "AXONReconstruction"
cmake = module / "CMakeLists.txt"
files = sorted(p.relative_to(module).as_posix() for p in module.rglob("*.py") if "egg-info" not in p.as_posix())
block = "set(MODULE_PYTHON_SCRIPTS\n" + "".join(f"  {f}\n" for f in files) + "  )"
text = re.sub(r"set\(MODULE_PYTHON_SCRIPTS.*?\)", lambda _: block, cmake.read_text(), count=1, flags=re.S)
cmake.write_text(text)
print(f"{len(files)} Python files listed in {cmake}")
