#!/usr/bin/env bash
# Download (here, where the package registry is reachable) the wheels a lent GPU machine lacks for
# scripts/gpu_check.sh: its Python 3.12 has torch, numpy, scipy, safetensors and pillow only.
# Everything that travels (tracked tree + carried paths) must stay under 64 MiB; this prints the sum.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu_wheels
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d gpu_wheels monai==1.6.1 einops==0.8.2 pydicom==3.0.2 tqdm==4.70.1 simpleitk==2.5.7 pytest==9.2.0 \
  iniconfig==2.3.1 pluggy==1.7.0 pygments==2.21.0
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
wheels=$(du -cb gpu_wheels/*.whl | tail -1 | cut -f1)
echo "tree $((tree / 1048576)) MiB + wheels $((wheels / 1048576)) MiB = $(((tree + wheels) / 1048576)) MiB (limit 64)"
