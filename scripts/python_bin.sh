# Sourced by run.sh and app.sh: the Python that creates a project environment ($PYTHON, else the first
# of python3.11, python3.12, python3 on PATH), in $python_bin; exits with one line when there is none.
python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
[ -n "$python_bin" ] || { echo "$(basename "$0"): no python3 found (need Python 3.11 or 3.12)" >&2; exit 1; }
