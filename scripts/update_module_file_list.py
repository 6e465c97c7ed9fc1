"""Rewrite MODULE_PYTHON_SCRIPTS in AXONReconstruction/CMakeLists.txt from the engine's files.

Run after adding or removing an engine module; Testing/engine/test_packaging.py fails until you do.
"""

import re
from pathlib import Path

module = Path(__file__).resolve().parents[1] / "AXONReconstruction"
cmake = module / "CMakeLists.txt"
files = sorted(p.relative_to(module).as_posix() for p in (module / "axonct").rglob("*.py"))
block = "set(MODULE_PYTHON_SCRIPTS\n" + "".join(f"  {f}\n" for f in files) + "  )"
text = re.sub(r"set\(MODULE_PYTHON_SCRIPTS.*?\)", lambda _: block, cmake.read_text(), count=1, flags=re.S)
cmake.write_text(text)
print(f"{len(files)} engine files listed in {cmake}")
