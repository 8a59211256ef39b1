#!/usr/bin/env bash
# One-command GPU check: the test suite, the benchmark grid, then the kernel microbenchmarks, all into OUT_DIR,
# within 10 minutes on an H100 (limits: tests 170 s, grid 315 s, microbenchmarks 75 s; override with T_TESTS,
# T_GRID, T_MICRO). The grid runs bf16 only with a time budget; compile rows run last and may be cut short.
# Every stage runs even if an earlier one failed; the exit status is non-zero if any failed.
# Needs no pip: run from anywhere as `benchmarks/gpu_check.sh OUT_DIR` (PYTHON=... to pick the interpreter).
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
T_TESTS=${T_TESTS:-170}
T_GRID=${T_GRID:-315}
T_MICRO=${T_MICRO:-75}
START=$(date +%s)
FAILED=()

stage() {  # stage NAME LIMIT_S CMD...: run CMD under a time limit, log it, report rc and elapsed time
    local name=$1 limit=$2
    shift 2
    local t0 rc
    t0=$(date +%s)
    echo "=== [$name] start (limit ${limit} s): $*"
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    echo "=== [$name] rc=$rc after $(( $(date +%s) - t0 )) s (total $(( $(date +%s) - START )) s)"
    [ "$rc" -eq 124 ] && echo "=== [$name] hit its ${limit} s limit"
    [ "$rc" -ne 0 ] && FAILED+=("$name(rc=$rc)")
    return 0
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
    --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || echo "nvidia-smi unavailable" > "$OUT/nvidia-smi.csv"
cat "$OUT/nvidia-smi.csv"
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
                                  'cuda available', torch.cuda.is_available())"

stage tests "$T_TESTS" "$PY" -m pytest tests -x -q -p no:cacheprovider --junitxml="$OUT/junit.xml"

# the grid stops starting rows after --time-budget (compile rows run last); the stage limit leaves room to finish
# the row in flight and write the report; a killed run still leaves results.json of every finished row
stage grid "$T_GRID" "$PY" -m benchmarks --out "$OUT/bench" --dtypes bfloat16 --batch-sizes 1,8,64,256 \
    --cuda-graphs --warmup 3 --repeats 10 --time-budget $(( T_GRID - 60 )) --no-progress
if [ ! -f "$OUT/bench/results.md" ] && [ -f "$OUT/bench/results.json" ]; then
    "$PY" -m benchmarks.report "$OUT/bench" || true
fi

if "$PY" -c "import pytest_benchmark" 2>/dev/null; then
    # ViT-B and ViT-H shapes (H/14 has the odd head dim 80); -k "" for all three widths when time allows
    stage micro "$T_MICRO" "$PY" -m pytest benchmarks -q -p no:cacheprovider -k "${MICRO_K:-vit_b or vit_h}" \
        --benchmark-json="$OUT/micro.json" --benchmark-columns=median,iqr,rounds
else
    echo "=== [micro] skipped: pytest-benchmark is not installed"
fi

echo "=== total $(( $(date +%s) - START )) s; outputs in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "=== FAILED: ${FAILED[*]}"
    exit 1
fi
echo "=== all stages passed"
