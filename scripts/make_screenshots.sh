#!/usr/bin/env bash
# Make the extension's screenshots (Resources/Screenshots/*.png) from a real run:
#   1. .venv (scripts/run.sh's environment) reconstructs the bundled chest case with the demo weights
#      (`axon demo`), unless DEMO_DIR already holds that run;
#   2. .venv-screens (trame-slicer: Slicer's MRML, slice and 3D views, offscreen OpenGL; PySide6)
#      renders the slice views, the 3D volume rendering and the panel, and composes them.
# Needs Debian's libosmesa6 libegl1 libgl1 (apt-get install -y libosmesa6 libegl1 libgl1).
#   bash scripts/make_screenshots.sh [--rerun]
set -euo pipefail
cd "$(dirname "$0")/.."
demo_dir="${DEMO_DIR:-out/screenshots-demo}"
python_bin="${PYTHON:-python3.11}"

if [ ! -x .venv/bin/axon ]; then
  echo "make_screenshots.sh: .venv is missing; run 'bash scripts/run.sh test' (or demo) first" >&2; exit 1
fi
if [ ! -x .venv-screens/bin/python ]; then
  echo "== creating .venv-screens with $python_bin"
  "$python_bin" -m venv .venv-screens
fi
stamp=".venv-screens/.axon-screens-$(sha256sum requirements/screenshots.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing requirements/screenshots.txt"
  .venv-screens/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/screenshots.txt
  rm -f .venv-screens/.axon-screens-* && touch "$stamp"
fi
if [ "${1:-}" = "--rerun" ] || [ ! -f "$demo_dir/reconstruction.nrrd" ]; then
  echo "== reconstructing the sample case (axon demo --out $demo_dir)"
  .venv/bin/axon demo --out "$demo_dir"
fi
echo "== rendering"
.venv-screens/bin/python scripts/make_screenshots.py --demo "$demo_dir" --out Resources/Screenshots
