#!/usr/bin/env bash
# The one entry point of seg-loss-search. Creates .venv on first use, then dispatches.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

usage() {
  cat <<USAGE
usage: ./launch.sh COMMAND [ARGS...]

  search METRIC [NUM_GPUS] [key=value ...] [--address ADDR] [--results DIR]
      search a surrogate loss for METRIC: miou fwiou macc gacc biou bf1, a metric spec (dice
      fbeta tversky precision recall specificity balanced_accuracy miou_image dice_image) or a
      spec file (my_metric.yaml; search.metric_args={beta: 1} sets its constants); NUM_GPUS
      defaults to every visible GPU, 4 trials on each; without a GPU, CPU trials, at most one
      per core
  search --resume RUN_DIR [--address ADDR]
      continue an interrupted search
  retrain FILE [NUM_GPUS] [key=value ...] [--baseline ce] [--results DIR]
      retrain a full-size model with a loss file (a search's export, or one of
      experiments/retrain/); NUM_GPUS > 1 runs DDP (gloo processes on a CPU)
  retrain --resume RUN_DIR
      continue an interrupted retrain
  report RUN_DIR [RUN_DIR ...]
      report.md and plots of search and retrain runs
  check-data [data=NAME] [data.root=DIR] [data.params.KEY=VALUE ...]
      check every mask and image of a dataset (what search and retrain check before they start)
  bench NAME [ARGS ...]
      run bench/NAME.py: losses metrics train_step search_overhead gpu quality fidelity
      controllers holdout check_data
  test [PYTEST_ARGS ...]
      run the test suite (what CI runs)
  setup
      create or update .venv and exit
  help
      this text

key=value: any dotted config key, e.g. data=voc ppo.steps=4 retrain.fit.iterations=2000.
--address ADDR (or RAY_ADDRESS): join a Ray cluster. Details: README.md and docs/.
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
  check-data)
    setup_venv
    exec .venv/bin/python -m experiments.check_data "$@"
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
