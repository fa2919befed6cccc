#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs PyTorch (the CPU build,
# pinned) and the project with its test extras, builds the C++ engine, then runs
#   ./bootstrap.sh run    the training pipeline on this machine (hexz run)
#   ./bootstrap.sh test   ruff and the test suite
#   ./bootstrap.sh shell  a shell inside the environment
# Environment: HEXZ_VENV (default .venv); TORCH_INDEX_URL, the wheel index torch comes
# from (default PyTorch's CPU index; e.g. https://download.pytorch.org/whl/cu128 for CUDA).
set -euo pipefail
cd "$(dirname "$0")"

venv=${HEXZ_VENV:-.venv}
unset HEXZ_VENV # not a hexz setting: hexz refuses unknown HEXZ_* variables
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
torch_pin=torch==2.13.0

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"

# torch first, pinned, and the CPU build unless TORCH_INDEX_URL says otherwise: PyPI's
# Linux wheel pulls several GB of CUDA libraries. A wheel already on this machine that
# satisfies the pin (pip's find-links or the installed one) wins without asking any index,
# so an unreachable PyTorch index costs nothing there.
install_torch() {
  if [ -z "${TORCH_INDEX_URL:-}" ] \
    && python -m pip install --quiet --no-index --no-deps "$torch_pin" 2>/dev/null; then
    python -m pip install --quiet "$torch_pin" # its dependencies, from the usual index
  else
    local index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
    echo "bootstrap: installing $torch_pin from $index" >&2
    python -m pip install --quiet --index-url "$index" "$torch_pin"
  fi
}

stamp="$venv/.hexz-installed"
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py -newer "$stamp")" ]; then
  python -m pip install --quiet --upgrade pip setuptools wheel cython
  install_torch
  python -m pip install --quiet --no-build-isolation -e ".[test]"
  touch "$stamp"
fi
# Rebuilds the engine only where C++ or Cython sources changed since the last build.
python setup.py --quiet build_ext --inplace --parallel "$(nproc)"

case "${1:-}" in
  run) shift; exec hexz run "$@" ;;
  test) shift; ruff check . && exec python -m pytest "$@" ;;
  shell) shift; exec "${SHELL:-bash}" "$@" ;;
  *) echo "usage: $0 run | test [pytest args] | shell" >&2; exit 2 ;;
esac
