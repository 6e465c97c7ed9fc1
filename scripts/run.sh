#!/usr/bin/env bash
# One entry point for a fresh machine: create the project-local environment (.venv) with pinned
# packages if needed, fetch the sample data once, then run the main job or the test suite.
#   bash scripts/run.sh demo [axon demo options]   # set up + main job
#   bash scripts/run.sh test [pytest options]      # set up + whole test suite
#   bash scripts/run.sh app | app-test | app-screenshots   # AXON in the browser (own environment: scripts/app.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-demo}"; shift || true
case "$job" in app|app-test|app-screenshots) exec bash scripts/app.sh "$job" "$@" ;; esac

. scripts/python_bin.sh

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi
stamp=".venv/.axon-lock-$(sha256sum requirements/lock.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing pinned packages (requirements/lock.txt)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  rm -f .venv/.axon-lock-* && touch "$stamp"
fi
.venv/bin/axon fetch-data >/dev/null

case "$job" in
  demo) exec .venv/bin/axon demo --overwrite "$@" ;;  # replaces only files an earlier demo wrote
  test) exec .venv/bin/python -m pytest "$@" ;;
  *) echo "run.sh: unknown job '$job' (use demo or test)" >&2; exit 2 ;;
esac
