#!/usr/bin/env bash
# The one entry point of seg-loss-search. Creates .venv on first use, then dispatches.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

usage() {
  cat <<USAGE
usage: ./launch.sh COMMAND [ARGS...]

commands:
  search METRIC [NUM_GPUS] [key=value ...] [--address ADDR]
                                             search a surrogate loss for METRIC
  search --resume RUN_DIR [--address ADDR]   continue an interrupted search
  retrain FILE [NUM_GPUS] [key=value ...] [--baseline ce]
                                             retrain a full-size model with a searched loss
  retrain --resume RUN_DIR                   continue an interrupted retrain
  report RUN_DIR [RUN_DIR ...]               plots and a Markdown summary of runs
  test [PYTEST_ARGS...]   run the test suite (what CI runs)
  bench NAME [ARGS...]    run bench/NAME.py (losses, metrics, train_step, search_overhead,
                          quality, controllers, gpu, fidelity)
  setup                   create or update .venv and exit
USAGE
}

# Python writes bytecode for our own modules too: every Ray worker imports them, and imports
# without cached bytecode are about 3x slower (DESIGN.md, environment facts).
unset PYTHONDONTWRITEBYTECODE

setup_venv() {
  local python=${PYTHON:-python3}
  local stamp=.venv/.installed
  # Reinstall only when the dependency list changed (or the venv is new or broken).
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  echo "[launch] setting up .venv (first run or pyproject.toml changed) ..." >&2
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  # pip byte-compiles what it installs; --no-compile is never passed (DESIGN.md).
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  .venv/bin/python -m pip install --quiet -e ".[test]" >&2
  .venv/bin/python -m compileall -q surrogates data segnets experiments search retrain results >/dev/null
  echo "$want" > "$stamp"
  echo "[launch] .venv ready" >&2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  search)
    setup_venv
    exec .venv/bin/python -m search.run "$@"
    ;;
  report)
    setup_venv
    exec .venv/bin/python -m results.report "$@"
    ;;
  retrain)
    setup_venv
    exec .venv/bin/python -m retrain.run "$@"
    ;;
  test)
    setup_venv
    exec .venv/bin/python -m pytest "$@"
    ;;
  bench)
    setup_venv
    name=${1:-}
    if [ -z "$name" ] || [ ! -f "bench/$name.py" ]; then
      shopt -s nullglob
      names=""
      for f in bench/*.py; do names+="$(basename "$f" .py) "; done
      echo "error: unknown benchmark '${name}'; choose from: ${names}" >&2
      exit 2
    fi
    shift
    exec .venv/bin/python "bench/$name.py" "$@"
    ;;
  setup)
    setup_venv
    ;;
  -h|--help|help)
    usage
    ;;
  *)
    [ -n "$cmd" ] && echo "error: unknown command '$cmd'" >&2
    usage >&2
    exit 2
    ;;
esac
