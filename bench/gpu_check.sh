#!/usr/bin/env bash
# One prepared check for a GPU machine (one H100/H200-class GPU), in under 10 minutes of steps:
#   GPU basics (nvidia-smi); every CUDA-only test (pytest -rs, so skips show); the generation benchmark on the
#   full-size architecture at batch 1, 8, 32 and 64, engine in bf16 with CUDA graphs on and off, against plain
#   transformers generate in fp32 and bf16; the cross-job benchmark, briefly, with the worker on the GPU, and its
#   --mixed round (a long job and one-sentence jobs, static vs continuous batching: one JSON object); last, the
#   engine eager and with torch.compile at batch 1 and 64, in one run.
# Prints one JSON line per figure (what, batch, dtype, graphs, value, unit) and writes them to $OUT/gpu_check.jsonl
# when $OUT is set. Each step has its own timeout, cut to what is left of the overall budget (BUDGET_S, default
# 600 s); a step that fails or runs out of time makes the exit status 1, the others still run. No GPU: exit 2 at once.
#   bench/gpu_check.sh            (PYTHON=... to use an interpreter other than .venv/bin/python)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUDGET_S=${BUDGET_S:-600}
START=$(date +%s)
FAILED=()
FIGURES=$(mktemp)
trap 'rm -f "$FIGURES" "$FIGURES".step' EXIT

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA device (nvidia-smi is missing or lists no GPU); nothing to check here" >&2
  exit 2
fi

emit() {  # one figure line: to stdout and to the collected figures
  echo "$1"
  echo "$1" >>"$FIGURES"
}

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME TIMEOUT_S COMMAND...: runs COMMAND under `timeout`, its stdout's JSON lines become figures.
step() {
  local name=$1 limit=$2 rc t0 remaining
  shift 2
  remaining=$(left)
  if [ "$remaining" -lt 15 ]; then
    echo "== $name: SKIPPED, the ${BUDGET_S} s budget is spent" >&2
    FAILED+=("$name (no time left)")
    emit "{\"what\": \"step\", \"step\": \"$name\", \"status\": \"skipped: no time left\", \"value\": null, \"unit\": \"s\"}"
    return
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  echo "== $name (timeout ${limit} s, $(left) s of the budget left)" >&2
  t0=$(date +%s)
  # SIGINT first: Python unwinds (the benchmarks stop their Redis, S3 server and workers), SIGKILL 15 s later
  timeout -s INT --kill-after=15 "$limit" "$@" >"$FIGURES.step"
  rc=$?
  grep '^{' "$FIGURES.step" | while IFS= read -r line; do emit "$line"; done
  grep -v '^{' "$FIGURES.step" >&2
  local status=ok
  if [ "$rc" -ne 0 ]; then
    status="failed (exit $rc$([ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] && echo ', timed out'))"
    FAILED+=("$name: $status")
  fi
  echo "== $name: $status in $(($(date +%s) - t0)) s" >&2
  emit "{\"what\": \"step\", \"step\": \"$name\", \"status\": \"$status\", \"value\": $(($(date +%s) - t0)), \"unit\": \"s\"}"
}

gpu_basics() {  # run by `timeout bash -c`, hence exported
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,compute_cap,clocks.max.sm,power.limit \
    --format=csv >&2
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1 | awk -F', ' \
    '{printf "{\"what\": \"gpu\", \"value\": \"%s\", \"memory\": \"%s\", \"driver\": \"%s\", \"unit\": null}\n", $1, $2, $3}'
}
export -f gpu_basics

find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if [ ! -x .venv/bin/python ]; then
    echo "== no .venv: creating it with ./dev (pip, outside the step budget; needs the package index)" >&2
    timeout 1200 ./dev bench generation --help >/dev/null || { echo "gpu_check: ./dev could not create .venv" >&2; exit 1; }
  fi
  echo "$ROOT/.venv/bin/python"
}

PY=$(find_python) || exit 1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
START=$(date +%s)  # the budget counts from here: a venv install is not part of it
step "gpu basics" 30 bash -c gpu_basics
step "torch sees CUDA" 60 "$PY" -c 'import json, torch; assert torch.cuda.is_available(), "torch: no CUDA"
p = torch.cuda.get_device_properties(0)
print(json.dumps({"what": "torch", "value": torch.__version__, "cuda": torch.version.cuda, "gpu": p.name,
                  "bf16": torch.cuda.is_bf16_supported(including_emulation=False), "unit": None}))'
# The CUDA-only tests are the ones skipped without CUDA: test_engine.py (graphs replay the eager codes; a second GPU),
# test_csm_model.py (the bf16 path, device selection); -k picks them by name.
step "CUDA tests" 120 "$PY" -m pytest -rs -q -p no:cacheprovider tests/unit -k "cuda or gpu or device_selection"
GEN=("$PY" bench/generation.py --device cuda --backbone-layers 16 --depth-layers 4 --frames 6 --repeats 3
     --graphs both --figures)
step "generation, batch 1" 80 "${GEN[@]}" --batch 1
step "generation, batch 8" 70 "${GEN[@]}" --batch 8 --skip naive
step "generation, batch 32" 70 "${GEN[@]}" --batch 32 --skip naive
step "generation, batch 64" 80 "${GEN[@]}" --batch 64 --skip naive
step "crossjob" 120 "$PY" bench/crossjob.py --device cuda --jobs 8 --figures
step "crossjob mixed" 150 "$PY" bench/crossjob.py --mixed --repeats 1 --device cuda --model mid-random --json
# Last, as it may not fit: the engine eager, then its steps compiled (ECHOFORGE_TORCH_COMPILE), graphs on, in one
# run (the ratio is a figure); the compile is in the warm-up run, outside the timed frames. The CUDA tests above
# include the compiled steps under CUDA graphs.
step "generation, eager vs compiled, batch 1 and 64" 240 "$PY" bench/generation.py --device cuda --frames 6 \
  --repeats 3 --graphs on --figures --batch 1 64 --skip naive --skip plain --compile both

echo "== figures ($(grep -c . "$FIGURES") lines)" >&2
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$FIGURES" "$OUT/gpu_check.jsonl" && echo "== written to $OUT/gpu_check.jsonl" >&2
fi
echo "== took $(($(date +%s) - START)) s of the ${BUDGET_S} s budget" >&2
if [ ${#FAILED[@]} -gt 0 ]; then
  printf '== FAILED: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
echo "== all steps passed" >&2
