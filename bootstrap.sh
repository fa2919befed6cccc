#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs PyTorch (the CPU wheel,
# pinned) and the project with its test extras, builds the C++ engine, then runs
#   ./bootstrap.sh run    the training pipeline on this machine (hexz run)
#   ./bootstrap.sh test   ruff and the test suite
#   ./bootstrap.sh shell  a shell inside the environment
set -euo pipefail
cd "$(dirname "$0")"

venv=${HEXZ_VENV:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"

stamp="$venv/.hexz-installed"
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml setup.py -newer "$stamp")" ]; then
  python -m pip install --quiet --upgrade pip setuptools wheel cython
  # torch first and pinned: a range would pull several GB of CUDA packages.
  python -m pip install --quiet torch==2.13.0
  python -m pip install --quiet --no-build-isolation -e ".[test]"
  touch "$stamp"
fi
# Rebuilds the engine only where C++ or Cython sources changed since the last build.
python setup.py --quiet build_ext --inplace

case "${1:-}" in
  run) shift; exec hexz run "$@" ;;
  test) shift; ruff check . && exec python -m pytest "$@" ;;
  shell) shift; exec "${SHELL:-bash}" "$@" ;;
  *) echo "usage: $0 run | test [pytest args] | shell" >&2; exit 2 ;;
esac
