#!/usr/bin/env bash
# AXON in the browser (`axon app`): its own environment and jobs, called by scripts/run.sh.
#   bash scripts/run.sh app [axon app options]          # set up .venv-app, start the app (127.0.0.1:8080)
#   bash scripts/run.sh app-test [pytest options]       # + Debian's chromium and driver; the browser test
#   bash scripts/run.sh app-screenshots                 # the browser test with the bundled weights; README's pictures
# .venv-app is apart from .venv because trame-slicer pins an older slicer-core and vtk (requirements/app.txt).
# The views need Debian's libosmesa6 libegl1 libgl1; the test needs chromium and chromium-driver. Missing
# Debian packages are installed with apt-get when this runs as root, else named in one line.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-app}"; shift || true
t_start=$SECONDS

. scripts/python_bin.sh

need_debian() {  # need_debian PACKAGE...: install what is missing, or say how
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "app.sh: missing Debian packages; run: sudo apt-get install -y ${missing[*]}" >&2; exit 1
  fi
}

if command -v dpkg >/dev/null 2>&1; then
  need_debian libosmesa6 libegl1 libgl1
  case "$job" in app-test|app-screenshots) need_debian chromium chromium-driver ;; esac
fi

if [ ! -x .venv-app/bin/python ] || [ ! -f .venv-app/pyvenv.cfg ]; then
  echo "== creating .venv-app with $python_bin"
  rm -rf .venv-app  # a half-made or half-deleted one: its python would install into the base interpreter
  "$python_bin" -m venv .venv-app
fi
.venv-app/bin/python -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' ||
  { echo "app.sh: .venv-app/bin/python is not a virtual environment; remove .venv-app and rerun" >&2; exit 1; }
stamp=".venv-app/.axon-app-$(sha256sum requirements/app.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing pinned packages (requirements/app.txt)"
  .venv-app/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/app.txt
  .venv-app/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  rm -f .venv-app/.axon-app-* && touch "$stamp"
fi
.venv-app/bin/axon fetch-data >/dev/null  # the sample case's CT (shared with .venv through .data/)
setup_s=$((SECONDS - t_start))

browser_test() {  # browser_test OUTDIR [pytest options]: run the test, record date, result and timings
  local out="$1"; shift
  mkdir -p "$out"
  local t0=$SECONDS rc
  set +e
  AXON_APP_SCREENSHOTS="$out" .venv-app/bin/python -m pytest Testing/slicer/test_web_browser.py -p no:cacheprovider \
    -v "$@" 2>&1 | tee "$out/pytest.log"
  rc=${PIPESTATUS[0]}
  set -e
  local test_s=$((SECONDS - t0))
  local summary
  summary=$(grep -E "^=+ .*(passed|failed|skipped|error).* =+$" "$out/pytest.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
  printf '{"date": "%s", "result": "%s", "exit_code": %d, "setup_s": %d, "test_s": %d, "chromium": "%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$summary" "$rc" "$setup_s" "$test_s" \
    "$(chromium --version 2>/dev/null | head -1 | cut -d' ' -f1-2)" > "$out/last-run.json"
  echo "app.sh: $(cat "$out/last-run.json")"
  return "$rc"
}

case "$job" in
  app) exec .venv-app/bin/axon app "$@" ;;
  app-test) browser_test out/app-test "$@" ;;
  app-screenshots)
    AXON_APP_TEST_WEIGHTS=bundled browser_test out/app-screenshots "$@"
    .venv-app/bin/python - <<'EOF'
from pathlib import Path
from PIL import Image

# the page with a real reconstruction (bundled weights), for README: result, comparison, difference
for shot, name in (("05-result", "AXONWeb-result"), ("06-compare", "AXONWeb-compare")):
    image = Image.open(f"out/app-screenshots/{shot}.png").convert("RGB")
    image = image.resize((1280, round(image.height * 1280 / image.width)), Image.LANCZOS)
    image.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(f"Resources/Screenshots/{name}.png", optimize=True)
    print(f"Resources/Screenshots/{name}.png", Path(f"Resources/Screenshots/{name}.png").stat().st_size, "bytes")
EOF
    ;;
  *) echo "app.sh: unknown job '$job' (use app, app-test or app-screenshots)" >&2; exit 2 ;;
esac
