#!/usr/bin/env bash
# The GPU session's device commands (each ends by itself inside its limit and leaves its files even when cut short).
# Run from the repository root: `bash benchmarks/gpu_steps.sh STEP [ARG]`. A 15-minute lease runs `lease` (every step
# below in priority order, resuming on a warm machine); the single steps are for a lease with time to spare. Order and
# expected times are in benchmarks/NOTES.md, "GPU session plan".
#   lease [S [STEP...]] within S seconds (default 560): tests (once per machine), headline (resumed), profile, grid 1-6
#                      (profile8, profile1, fp8acc, fp8tma, fp8ws, b1engine, b1split, b1desc, b1pdl, lnstats, gelu,
#                      stagger, ws16, ablate256, ablate1, ablateL and micro only when named), each skipped when done
#                      on this machine or too long for the time left; STEPs (e.g. headline profile) pick and order
#                      them. After a test step on the machine, the steps and rows of a Gluon engine (ws16,
#                      ablate256's and ablateL's ws rows; fp8ws, ablateL's FP8 ws row) run only if its tests' GPU
#                      comparison passed (gluon_tested)
#                      Writes $OUT/lease/:
#                      runs.tar.gz (every step's files so far), lease.log, headline.md, tests.txt
#   tests              the GPU test subset (tests/gpu_subset.txt), < 3 min, junit + one JSON line per test; each
#                      kernel key compiles only the first config its prune keeps (VITFAST_AUTOTUNE=first). Beside
#                      it, PREWARM (3; DRY 1) processes compile the headline's vit_fast kernels into the benchmark
#                      steps' Triton cache (benchmarks/prewarm.py; prewarm.log)
#   headline [ROWS]    B/16 b256 (compile too) + b1 (CUDA graphs), L/16 b256 (FP8, compile), H/14 b64 (compile),
#                      H/14 b256 (FP8), B/16 b1 compile: priority order (benchmarks/headline.py ROWS), row by row
#                      (RESUME=1: keep the rows a previous call on this machine measured)
#   profile            per-kernel CUDA time of one B/16 b256 bf16 forward, vit_fast and compile, grouped by layer part
#   profile8           the same for the FP8 model (vit_fast) of L/16 at b256: where FP8 loses against bf16
#   profile1           the same for B/16 at batch 1, vit_fast beside sdpa: which kernels keep batch 1 above 0.5 ms
#                      (kernel time only: CUDA graphs remove the launch gaps, not the kernels)
#   fp8acc             L/16 b256 vit_fast bf16 and FP8, twice: with VITFAST_FP8_PRECISE_ACC=0 (no fp32 promotion of
#                      the FP8 partial sums; results.json records the switch), then as shipped (promoted/): what the
#                      promotion costs in speed and error, each against bf16 measured in the same run
#   fp8tma             the same rows with VITFAST_FP8_ENGINE=tma (the FP8 TMA engine, gemm_fp8_tma.py, the default
#                      on sm_90 since the third lease), then also with VITFAST_FP8_PRECISE_ACC=0 (fast/)
#   fp8ws              the same rows with VITFAST_FP8_ENGINE=ws (the promoted FP8 GEMMs on the warp-specialized
#                      Gluon engine, gemm_fp8_ws.py), then as shipped (shipped/: the FP8 TMA engine)
#   b1engine           B/16 batch 1 with CUDA graphs, vit_fast beside sdpa: the 16-bit GEMMs on the pointer engine
#                      (VITFAST_GEMM_ENGINE=pointer), then as shipped (shipped/): whether small-M GEMMs should leave
#                      the TMA engine (persistent programs, TMA descriptors)
#   b1split            the same rows with split-K off (VITFAST_SPLIT_K=1, the GEMMs' code before it), then as
#                      shipped (shipped/: batch 1's GEMMs split K where the autotuner picks a tile that can):
#                      what split-K gains
#   b1desc             the same rows with each TMA program building its descriptors on the device
#                      (VITFAST_TMA_DESC=device, the engines' code before host descriptors), then as shipped
#                      (shipped/: descriptors from the launch, kernels/tma_desc.py): what host descriptors gain
#   b1pdl              the same rows with programmatic dependent launch (VITFAST_PDL=1: the TMA GEMMs and attention
#                      launched while their predecessor runs, kernels/pdl.py), then as shipped (shipped/: without)
#   lnstats            B/16 b256 bf16 vit_fast with CUDA graphs, as the headline: every LayerNorm with a statistics
#                      launch of its own (VITFAST_LN_PARTIALS=0), then as shipped (shipped/: the residual GEMMs'
#                      partial statistics, merged in the next GEMM): what the merged statistics gain, in one lease
#   gelu               the same row with FC1's exact GELU through libdevice's erf (VITFAST_GELU=libdevice, the code
#                      before the fitted erfc), then as shipped (shipped/): what the shorter GELU epilogue gains
#   stagger            the same row with both programs of the two-programs GEMM rows starting together
#                      (VITFAST_STAGGER=0), then as shipped (shipped/: the second one late, kernels/stagger.py): what
#                      the staggered start gains on the tiles the headline picked (the switch is no autotune key)
#   ws16               the same row with the 16-bit GEMMs on the warp-specialized Gluon engine (VITFAST_GEMM_ENGINE=ws,
#                      gemm_ws.py: all four of a block at this batch), then as shipped (shipped/: the TMA engine):
#                      what overlapping their epilogues gains
#   ablate256          lnstats', gelu's, stagger's and ws16's switched rows and the shipped one in one process
#                      (benchmarks/ablation.py: one model build and reference, each setting's CUDA graph, replayed
#                      in turns): ablation.json, ablation.md
#   ablate1            the same for b1engine's, b1split's, b1desc's and b1pdl's switched rows at batch 1, and
#                      VITFAST_STATS_SLOT=128 (the statistics writers' tiles at least 128 columns wide, as before
#                      change 29) and VITFAST_LN_PARTIALS=0 there (the writers' tiles against launches)
#   ablateL            the same for L/16 b256, bf16 as shipped against: dtype=float8 (the FP8 model as shipped:
#                      issue 13's 1.4x target), VITFAST_GEMM_ENGINE=ws (issue 10's 1.2x compile target), FP8 with
#                      VITFAST_FP8_ENGINE=ws and with VITFAST_FP8_PRECISE_ACC=0 (fp8ws's and fp8acc's rows)
#                      b1engine, b1split, b1desc and b1pdl have the same shipped rows, as lnstats, gelu, stagger and
#                      ws16 do: the first of a group to measure them whole keeps them (per commit and VITFAST_*
#                      settings) and the later ones copy them into their shipped/ (shared.txt says whose) and
#                      measure only their switched half
#   grid N             slice N (1-6) of the rest of the grid; `grid list` prints the slices
#   merge              merge headline + every grid slice run so far on this machine into one results directory
#   micro              kernel microbenchmarks (CUDA-graph timing, batch 64: the model's autotune bucket)
# Output: $OUT/<step>/ (the device tool's OUT; else OUT=... or out/gpu), at most 8 files per step (what the device
# tool brings back), mirrored into .gpucache/runs/<step>/ so `merge` finds earlier steps of a warm machine.
# The Triton and Inductor caches live in .gpucache/ (git-ignored, kept between the calls of a warm machine).
# DRY=1: the same commands at toy sizes on whatever device is there (tests/test_gpu_steps.py runs them on CPU).
# VITFAST_SOURCE_COMMIT: the commit to record in results (the device's copy of the tree has no .git).
set -u
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"  # lease runs the steps through it after the cd below
cd "$(dirname "$0")/.."
STEP=${1:-}
ARG=${2:-}
PY=${PYTHON:-python3}
OUT_ROOT=${OUT:-out/gpu}
CACHE=${VITFAST_GPU_CACHE:-$PWD/.gpucache}
DRY=${DRY:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=$CACHE/triton TORCHINDUCTOR_CACHE_DIR=$CACHE/inductor
export TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
export TRITON_CACHE_AUTOTUNING=1  # autotune choices persist next to the compiled kernels (benchmark steps)

# the grid slices: models | batch sizes | dtypes | backends. compile rows of the headline shapes run in `headline`;
# here compile only at batch 8 and 64 of the anchors (each (model, batch) costs a max-autotune compile).
SLICES=(
    ""
    "vit_b_16,vit_l_16,vit_h_14|1,8,64,256|bfloat16,float16|eager,sdpa,vit_fast"
    "vit_b_32,vit_b_14,vit_l_14|1,8,64,256|bfloat16,float16|eager,sdpa,vit_fast"
    "vit_l_32,vit_h_16,vit_h_32|1,8,64,256|bfloat16,float16|eager,sdpa,vit_fast"
    "vit_b_16,vit_l_16,vit_h_14|1,8,64,256|bfloat16|timm,hf"
    "vit_b_16,vit_l_16|8,64|bfloat16|compile"
    "vit_h_14|8|bfloat16|compile"
)

usage() {
    local steps="lease [SECONDS [STEP...]]|tests|headline [ROWS]|profile|profile8|profile1|fp8acc|fp8tma|fp8ws"
    steps+="|b1engine"
    steps+="|b1split|b1desc|b1pdl|lnstats|gelu|stagger|ws16|ablate256|ablate1|ablateL"
    steps+="|grid N|grid list"
    echo "usage: $0 {$steps|merge|micro}" >&2
    exit 2
}

case "$STEP" in
    lease|tests|headline|profile|profile8|profile1|fp8acc|fp8tma|fp8ws|b1engine|b1split|b1desc|b1pdl|lnstats) ;;
    gelu|stagger|ws16|ablate256|ablate1|ablateL) ;;
    grid|merge) ;;
    micro) ;;
    *) usage ;;
esac
if [ "$STEP" = grid ]; then
    if [ "$ARG" = list ]; then
        for i in $(seq 1 $((${#SLICES[@]} - 1))); do echo "grid $i: ${SLICES[$i]}"; done
        exit 0
    fi
    case "$ARG" in
        ''|*[!0-9]*) echo "error: grid needs a slice number 1-$((${#SLICES[@]} - 1)), got '$ARG'" >&2; exit 2 ;;
    esac
    if [ "$ARG" -lt 1 ] || [ "$ARG" -ge ${#SLICES[@]} ]; then
        echo "error: grid slice $ARG does not exist: expected 1-$((${#SLICES[@]} - 1))" >&2
        exit 2
    fi
fi

NAME=$STEP${ARG:+-$ARG}
[ "$STEP" = lease ] && NAME=lease
[ "$STEP" = headline ] && NAME=headline${ARG:+-$(echo "$ARG" | tr ':,' '-_')}  # device file names: no ':' or ','

DIR=$OUT_ROOT/$NAME
mkdir -p "$DIR" "$CACHE/runs"
LOG=$DIR/$STEP.log
START=$(date +%s)
{
    echo "=== $NAME: $(date -u +%FT%TZ), DRY=$DRY, cache $CACHE"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
        --format=csv 2>/dev/null || echo "nvidia-smi: not available"
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
              'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee $([ "${RESUME:-0}" = 1 ] && echo -a) "$LOG"  # a resumed step keeps its earlier calls' log

run() {  # run LIMIT_S CMD...: the command under a time limit (TERM first: the harness writes what it has)
    local limit=$1
    shift
    echo "=== $NAME: $* (limit ${limit} s)" | tee -a "$LOG"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    RC=${PIPESTATUS[0]}
}

has() { "$PY" -c "import $1" 2>/dev/null; }

commit() { "$PY" -c 'from vit_fast.provenance import source_commit; print(source_commit())'; }

gluon_tested() {  # gluon_tested TESTS_JSONL TEST_FILE: whether the Gluon engine TEST_FILE tests may run after the
    # test step that wrote TESTS_JSONL: none ran (the caller asked for the engine), or the file's GPU comparison passed
    # and nothing in it failed. A failed, errored or unfinished one (a hang is killed at the test step's limit and
    # leaves no line) keeps the engine out, so that a hang cannot take the rest of the call with it
    [ -f "$1" ] || return 0
    "$PY" - "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(s) for s in open(sys.argv[1]) if s.strip()]
mine = [r for r in rows if r["nodeid"].startswith(sys.argv[2] + "::")]
compared = any(r["outcome"] == "passed" and "::test_ws_engine_matches_" in r["nodeid"] for r in mine)
sys.exit(0 if compared and not any(r["outcome"] in ("failed", "error") for r in mine) else 1)
PY
}

shared_dir() {  # shared_dir STEP: where the steps whose shipped halves are the same rows keep that half, measured
    local group key  # once per machine, commit and VITFAST_* environment (the switched steps below); nothing for the
    case "$1" in     # other steps, nor for a commit that is unknown or has uncommitted changes
        b1engine|b1split|b1desc|b1pdl) group=b1 ;;
        lnstats|gelu|stagger|ws16) group=b256 ;;
        *) return ;;
    esac
    key=${STEP_COMMIT:-$(commit)}
    case "$key" in unknown|*+*) return ;; esac
    key=$( { echo "$key"; env | grep '^VITFAST_' | sort; } | sha1sum | cut -c1-16)
    echo "$CACHE/shipped/$group-$key"
}

RC=0
case "$STEP" in
lease)
    TOTAL=${ARG:-560}
    STEPS=${*:3}  # the steps may come as one quoted word or as several
    STEPS=${STEPS:-tests headline profile grid1 grid2 grid3 grid4 grid5 grid6}
    case "$TOTAL" in ''|*[!0-9]*) echo "error: lease needs whole seconds, got '$TOTAL'" >&2; exit 2 ;; esac
    for s in $STEPS; do
        case "$s" in
            tests|headline|profile|profile8|profile1|fp8acc|fp8tma|b1engine|b1split|b1desc|b1pdl|lnstats) ;;
            fp8ws|gelu|stagger|ws16|ablate256|ablate1|ablateL|grid[1-6]|micro) ;;
            *) echo "error: lease step '$s' is not one of tests headline profile profile8 profile1 fp8acc fp8tma" \
                    "fp8ws b1engine b1split b1desc b1pdl lnstats gelu stagger ws16 ablate256 ablate1 ablateL" \
                    "grid1..grid6 micro" >&2
               exit 2 ;;
        esac
    done
    END=$(( START + TOTAL ))
    W=$CACHE/lease-work  # every step's files, kept while the machine stays warm: the next lease resumes from them
    mkdir -p "$W"
    left() { echo $(( END - $(date +%s) )); }
    done_() { [ -f "$W/$1/.done" ]; }  # a step that ran to its end (one cut short runs again in the next lease)
    # a switched step whose group's shipped half is measured runs one half: its need less one half's budget (the
    # 25 s kept for packing and the 60 s T_BUDGET keeps back are not halved): 90 -> 62, 120 -> 77
    half_if_shared() {
        local dir
        dir=$(shared_dir "$1")
        [ -n "$dir" ] && [ -f "$dir/.done" ] && echo $(( ($2 - 35) / 2 + 35 )) || echo "$2"
    }
    sub() {  # sub NEED_S STEP [ARG]: the step into $W if NEED_S seconds are left (25 s stay for packing)
        local need=$1 name=$2${3:+-$3}
        shift
        if [ "$(left)" -lt $(( need + 25 )) ]; then
            echo "=== lease: $* skipped: $(left) s left, it needs $need s" | tee -a "$LOG"
            return
        fi
        echo "=== lease: $* with $(left) s left (needs $need s)" | tee -a "$LOG"
        OUT=$W T_LIMIT=$(( $(left) - 25 )) bash "$SELF" "$@" 2>&1 | tee -a "$LOG"
        local rc=${PIPESTATUS[0]}
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then  # its own limit: not the lease's (the device tool reads 124/137
            echo "=== lease: $* hit its time limit" | tee -a "$LOG"  # as the whole call timed out)
            rc=3
        elif [ "$rc" != 2 ] && ! grep -rqs --include=results.json --include=ablation.json '"error": "not run' \
                "$W/$name"; then
            touch "$W/$name/.done"  # ended by itself (tests that failed included), nothing left unrun
        fi
        [ "$RC" = 0 ] && RC=$rc
    }
    STEP_COMMIT=$(commit) && export STEP_COMMIT  # the steps' shared shipped halves are per commit
    [ "$STEP_COMMIT" = unknown ] &&
        echo "=== lease: WARNING: the commit is unknown (no .git here): set VITFAST_SOURCE_COMMIT" | tee -a "$LOG"
    for s in $STEPS; do
        gluon=$(case "$s" in ws16) echo tests/kernels/test_gemm_ws.py ;;
                                fp8ws) echo tests/kernels/test_gemm_fp8_ws.py ;; esac)
        if [ -n "$gluon" ] && ! gluon_tested "$W/tests/tests.jsonl" "$gluon"; then
            echo "=== lease: $s skipped: $gluon did not pass in this machine's test step" | tee -a "$LOG"
            continue
        fi
        case "$s" in
        tests)  # once per machine: a later lease on the same machine goes on with the benchmarks
            if done_ tests; then echo "=== lease: tests already ran on this machine" | tee -a "$LOG"
            else T_TESTS=$(( $(left) - 25 < ${T_TESTS:-130} ? $(left) - 25 : ${T_TESTS:-130} )) sub 90 tests; fi ;;
        headline) done_ headline || RESUME=1 sub 60 headline ;;
        profile) done_ profile || sub 300 profile ;;
        profile8) done_ profile8 || sub 200 profile8 ;;
        profile1) done_ profile1 || sub 90 profile1 ;;
        fp8acc|fp8tma|fp8ws) done_ "$s" || T_BUDGET=$(( $(left) - 60 )) sub 200 "$s" ;;
        b1engine|b1split|b1desc|b1pdl)  # half the time once a step of the group measured the shipped half
            done_ "$s" || T_BUDGET=$(( $(left) - 60 )) sub "$(half_if_shared "$s" 90)" "$s" ;;
        lnstats|gelu|stagger|ws16) done_ "$s" || T_BUDGET=$(( $(left) - 60 )) sub "$(half_if_shared "$s" 120)" "$s" ;;
        ablate256) done_ "$s" || sub 150 "$s" ;;
        ablate1) done_ "$s" || sub 130 "$s" ;;
        ablateL) done_ "$s" || sub 230 "$s" ;;
        grid*) done_ "grid-${s#grid}" || T_BUDGET=$(( $(left) - 85 )) sub 240 grid "${s#grid}" ;;
        micro) done_ micro || sub 300 micro ;;
        esac
    done
    # what the autotuner picked for every key this machine tuned, and what each config it timed measured
    "$PY" -m benchmarks.autotune_record --cache "$TRITON_CACHE_DIR" --out "$W/autotune" 2>&1 | tee -a "$LOG"
    # what comes back: at most 8 files, so every step's directory travels in one archive
    tar czf "$DIR/runs.tar.gz" -C "$W" . 2>&1 | tee -a "$LOG"
    [ -f "$W/headline/headline.md" ] && cp "$W/headline/headline.md" "$DIR/"
    if [ -f "$W/tests/tests.jsonl" ]; then
        "$PY" - "$W/tests/tests.jsonl" > "$DIR/tests.txt" <<'PY'
import collections, json, sys
lines = [json.loads(s) for s in open(sys.argv[1]) if s.strip()]
print("tests:", dict(collections.Counter(x["outcome"] for x in lines)))
for x in lines:
    if x["outcome"] == "failed":
        print("FAILED", x["nodeid"], "-", (x.get("message") or "").splitlines()[-1:])
PY
    fi
    for f in tests.txt headline.md; do [ -f "$DIR/$f" ] && cat "$DIR/$f"; done
    ;;
tests)
    # beside the tests, PREWARM processes compile the headline's vit_fast kernels into the benchmark steps' Triton
    # cache (benchmarks/prewarm.py: every config launched once, nothing timed, no autotune choice written); rows not
    # started 40 s before the step's end are skipped, and whatever still compiles at its end is stopped
    LIMIT=${T_TESTS:-170}
    PRE_PIDS=()
    rm -f "$DIR/prewarm.log"
    NPRE=${PREWARM:-$([ "$DRY" = 1 ] && echo 1 || echo 3)}
    for k in $(seq 1 "$NPRE"); do
        PRE=(--part "$k/$NPRE" --deadline $(( $(date +%s) + LIMIT - 40 )))
        [ "$DRY" = 1 ] && PRE+=(--tiny --rows vit_b_16:2)  # in the interpreter (a CPU), one small row
        TRITON_CACHE_DIR=$CACHE/triton TRITON_INTERPRET=$([ "$DRY" = 1 ] && echo 1 || echo 0) \
            timeout --signal=TERM --kill-after=5 $(( LIMIT - 10 )) nice -n 10 \
            "$PY" -m benchmarks.prewarm "${PRE[@]}" >> "$DIR/prewarm.log" 2>&1 &  # the tests first on the CPUs
        PRE_PIDS+=($!)
    done
    # and if this step is stopped itself, they stop with it (never compiling beside the headline's timings)
    trap 'kill ${PRE_PIDS[@]+"${PRE_PIDS[@]}"} 2>/dev/null' EXIT
    trap 'exit 143' TERM INT
    # noisy autotune timings of parallel workers must not be kept for the benchmark steps: if the kernels force
    # cache_results on, the tests compile into a cache of their own
    if grep -rqs "cache_results=True" vit_fast/kernels/; then export TRITON_CACHE_DIR=$CACHE/triton-tests; fi
    export TRITON_CACHE_AUTOTUNING=0
    export VITFAST_AUTOTUNE=${VITFAST_AUTOTUNE:-first}  # one config per kernel key: the window checks numerics
    export VITFAST_TEST_DEADLINE=$(( $(date +%s) + LIMIT - 40 )) VITFAST_TEST_HARD_END=$(( $(date +%s) + LIMIT - 15 ))
    export VITFAST_TEST_LOG=$DIR/tests.jsonl
    rm -f "$VITFAST_TEST_LOG"
    mapfile -t NODES < <(grep -v '^[[:space:]]*#' tests/gpu_subset.txt | grep .)
    ARGS=(-q -p no:cacheprovider -rfE --durations=15 --junitxml="$DIR/junit.xml")
    if [ "$DRY" = 1 ]; then
        ARGS+=(-k "test_ops_at_model_shapes and vit_h_14 and b1 and float32")
    else
        has xdist && ARGS+=(-n "${TEST_WORKERS:-8}")
        has pytest_timeout && ARGS+=(--timeout=120)
    fi
    run "$LIMIT" "$PY" -m pytest "${NODES[@]}" "${ARGS[@]}"
    TEST_RC=$RC
    while [ $(( $(date +%s) - START )) -lt $(( LIMIT - 10 )) ] && kill -0 ${PRE_PIDS[@]+"${PRE_PIDS[@]}"} 2>/dev/null
    do sleep 1; done  # the step's time left goes to the compiles (else the headline pays them)
    for pid in ${PRE_PIDS[@]+"${PRE_PIDS[@]}"}; do kill "$pid" 2>/dev/null; done
    wait ${PRE_PIDS[@]+"${PRE_PIDS[@]}"} 2>/dev/null
    [ -f "$DIR/prewarm.log" ] && tee -a "$LOG" < "$DIR/prewarm.log"
    RC=$TEST_RC
    ;;
headline)
    # rows must end 20 s before the step's limit, counted from now (python's start-up included)
    ARGS=(--out "$DIR" --deadline $(( START + ${T_LIMIT:-530} - 20 )))
    [ -n "${T_BUDGET:-}" ] && ARGS+=(--time-budget "$T_BUDGET")
    [ -n "$ARG" ] && ARGS+=(--only "$ARG")
    [ "${RESUME:-0}" = 1 ] && ARGS+=(--resume)
    [ "$DRY" = 1 ] && ARGS+=(--tiny)
    run "${T_LIMIT:-530}" "$PY" -m benchmarks.headline "${ARGS[@]}"
    ;;
profile)
    ARGS=(--out "$DIR")
    [ "$DRY" = 1 ] && ARGS+=(--tiny)
    run "${T_LIMIT:-500}" "$PY" -m benchmarks.breakdown "${ARGS[@]}"
    ;;
profile1)
    ARGS=(--out "$DIR" --batch 1 --backends vit_fast,sdpa)
    [ "$DRY" = 1 ] && ARGS+=(--tiny --backends eager,sdpa)
    run "${T_LIMIT:-200}" "$PY" -m benchmarks.breakdown "${ARGS[@]}"
    ;;
profile8)
    ARGS=(--out "$DIR" --model vit_l_16 --dtype float8 --backends vit_fast)
    # DRY on a CPU: the FP8 kernels run in Triton's interpreter (FP8 dots run there)
    [ "$DRY" = 1 ] && { ARGS+=(--tiny); export TRITON_INTERPRET=1; }
    run "${T_LIMIT:-300}" "$PY" -m benchmarks.breakdown "${ARGS[@]}"
    ;;
fp8acc|fp8tma|fp8ws|b1engine|b1split|b1desc|b1pdl|lnstats|gelu|stagger|ws16)
    # per step: the rows, the switches of the new measurement (FIRST, with half the time) and of its companion
    # (SECOND, into SUB/, with what is left); DRY on a CPU: toy sizes in Triton's interpreter, fp32 (it runs fp32 and
    # FP8 dots, not bf16 ones), no graphs there
    # "${TOY[@]},depth=N": the suffix joins the last element, the overrides
    TOY=(--resolution 32 --repeats 1 --warmup 0 --config-overrides embed_dim=64,num_heads=2,mlp_dim=128)
    case "$STEP" in
    lnstats)  # the headline's B/16 b256 vit_fast row: a statistics launch per LayerNorm, then the merged partials
        ARGS=(--models vit_b_16 --batch-sizes 256 --dtypes bfloat16 --backends vit_fast --cuda-graphs
              --graph-max-batch 256)
        DRY_ARGS=(--dtypes float32 --batch-sizes 2 "${TOY[@]},depth=2")  # two blocks: the merged partials run
        FIRST=(VITFAST_LN_PARTIALS=0) SECOND=() SUB=shipped ;;
    gelu)  # the same row with libdevice's erf in FC1's GELU, then the fitted erfc as shipped
        ARGS=(--models vit_b_16 --batch-sizes 256 --dtypes bfloat16 --backends vit_fast --cuda-graphs
              --graph-max-batch 256)
        DRY_ARGS=(--dtypes float32 --batch-sizes 2 "${TOY[@]},depth=2")  # lnstats' (one shipped half)
        FIRST=(VITFAST_GELU=libdevice) SECOND=() SUB=shipped ;;
    stagger)  # the same row with the two-programs rows' programs starting together, then staggered as shipped
        ARGS=(--models vit_b_16 --batch-sizes 256 --dtypes bfloat16 --backends vit_fast --cuda-graphs
              --graph-max-batch 256)
        DRY_ARGS=(--dtypes float32 --batch-sizes 2 "${TOY[@]},depth=2")  # lnstats' (one shipped half)
        FIRST=(VITFAST_STAGGER=0) SECOND=() SUB=shipped ;;
    ws16)  # the same row with FC1 on the warp-specialized engine, then on the TMA engine as shipped
        ARGS=(--models vit_b_16 --batch-sizes 256 --dtypes bfloat16 --backends vit_fast --cuda-graphs
              --graph-max-batch 256)
        DRY_ARGS=(--dtypes float32 --batch-sizes 2 "${TOY[@]},depth=2")  # lnstats' (one shipped half)
        FIRST=(VITFAST_GEMM_ENGINE=ws) SECOND=() SUB=shipped ;;
    b1engine)  # batch 1 on the pointer GEMM engine, then as shipped (TMA on sm_90)
        ARGS=(--models vit_b_16 --batch-sizes 1 --dtypes bfloat16 --backends vit_fast,sdpa --cuda-graphs
              --graph-max-batch 1)
        DRY_ARGS=(--dtypes float32 "${TOY[@]},depth=1")
        FIRST=(VITFAST_GEMM_ENGINE=pointer) SECOND=() SUB=shipped ;;
    b1split)  # batch 1 without split-K, then as shipped
        ARGS=(--models vit_b_16 --batch-sizes 1 --dtypes bfloat16 --backends vit_fast,sdpa --cuda-graphs
              --graph-max-batch 1)
        DRY_ARGS=(--dtypes float32 "${TOY[@]},depth=1")
        FIRST=(VITFAST_SPLIT_K=1) SECOND=() SUB=shipped ;;
    b1desc)  # batch 1 with the TMA descriptors built on the device, then as shipped (from the launch)
        ARGS=(--models vit_b_16 --batch-sizes 1 --dtypes bfloat16 --backends vit_fast,sdpa --cuda-graphs
              --graph-max-batch 1)
        DRY_ARGS=(--dtypes float32 "${TOY[@]},depth=1")
        FIRST=(VITFAST_TMA_DESC=device) SECOND=() SUB=shipped ;;
    b1pdl)  # batch 1 with programmatic dependent launch, then as shipped (without)
        ARGS=(--models vit_b_16 --batch-sizes 1 --dtypes bfloat16 --backends vit_fast,sdpa --cuda-graphs
              --graph-max-batch 1)
        DRY_ARGS=(--dtypes float32 "${TOY[@]},depth=1")
        FIRST=(VITFAST_PDL=1) SECOND=() SUB=shipped ;;
    *)  # L/16 b256 bf16 and FP8
        ARGS=(--models vit_l_16 --batch-sizes 256 --dtypes bfloat16,float8 --backends vit_fast)
        DRY_ARGS=(--dtypes float8 --batch-sizes 2 "${TOY[@]},depth=1")
        if [ "$STEP" = fp8acc ]; then  # without the promotion, then as shipped
            FIRST=(VITFAST_FP8_PRECISE_ACC=0) SECOND=() SUB=promoted
        elif [ "$STEP" = fp8ws ]; then  # the warp-specialized engine where it runs, then as shipped (TMA)
            FIRST=(VITFAST_FP8_ENGINE=ws) SECOND=() SUB=shipped
        else  # the FP8 TMA engine as shipped, then without the promotion too
            FIRST=(VITFAST_FP8_ENGINE=tma) SECOND=(VITFAST_FP8_ENGINE=tma VITFAST_FP8_PRECISE_ACC=0) SUB=fast
        fi ;;
    esac
    ARGS+=(--no-plots --no-progress)
    [ "$DRY" = 1 ] && { export TRITON_INTERPRET=1; ARGS+=("${DRY_ARGS[@]}"); }
    LIMIT=${T_LIMIT:-500} BUDGET=${T_BUDGET:-440}
    # The steps of a group (the same rows: batch 1's, B/16 b256's) measure the shipped half once per machine: the
    # first to finish it whole keeps a copy in $SHARED (with its arguments), a later one with the same arguments
    # copies that (shared.txt says whose it is) and gives its switched half the whole time.
    SHARED=$(shared_dir "$STEP")
    HALVES=2
    [ -n "$SHARED" ] && [ -f "$SHARED/.done" ] && [ "$(cat "$SHARED/args.txt")" = "${ARGS[*]}" ] && HALVES=1
    # each half in a subshell with its switches exported; ${A[@]+...}: an empty array under `set -u` (bash < 4.4)
    (for kv in ${FIRST[@]+"${FIRST[@]}"}; do export "$kv"; done
     run $(( LIMIT / HALVES )) "$PY" -m benchmarks --out "$DIR" --time-budget $(( BUDGET / HALVES )) "${ARGS[@]}"
     exit "$RC")
    FIRST_RC=$?
    SPENT=$(( $(date +%s) - START ))
    mkdir -p "$DIR/$SUB"
    if [ "$HALVES" = 1 ]; then
        if cp "$SHARED"/results.* "$SHARED/shared.txt" "$DIR/$SUB/"; then
            echo "=== $NAME: the shipped half as $(head -1 "$SHARED/shared.txt")" | tee -a "$LOG"
            RC=0
        else
            RC=1
        fi
    else
        (for kv in ${SECOND[@]+"${SECOND[@]}"}; do export "$kv"; done
         run $(( LIMIT - SPENT )) "$PY" -m benchmarks --out "$DIR/$SUB" --time-budget $(( BUDGET - SPENT )) \
             "${ARGS[@]}"
         exit "$RC")
        RC=$?
        if [ -n "$SHARED" ] && [ "$RC" = 0 ] && [ -f "$DIR/$SUB/results.json" ] &&
                ! grep -qs '"error": "not run' "$DIR/$SUB/results.json"; then
            mkdir -p "$SHARED"
            echo "measured by the $STEP step ($(date -u +%FT%TZ)); shared by the steps of its group" \
                > "$DIR/$SUB/shared.txt"
            echo "${ARGS[*]}" > "$SHARED/args.txt"
            cp "$DIR/$SUB"/results.* "$DIR/$SUB/shared.txt" "$SHARED/" && touch "$SHARED/.done"
        fi
    fi
    [ "$FIRST_RC" != 0 ] && RC=$FIRST_RC
    ;;
ablate256|ablate1|ablateL)
    # one process: the shipped setting, then each switched one (benchmarks/ablation.py); settings not prepared 30 s
    # before the step's end are recorded as not run. DRY on a CPU: toy sizes in Triton's interpreter, fp32
    MODEL=vit_b_16
    WS=(--switch VITFAST_GEMM_ENGINE=ws)
    if [ "$STEP" != ablate1 ] && ! gluon_tested "$OUT_ROOT/tests/tests.jsonl" tests/kernels/test_gemm_ws.py; then
        echo "=== $STEP: without VITFAST_GEMM_ENGINE=ws: tests/kernels/test_gemm_ws.py did not pass in this" \
             "machine's test step" | tee -a "$LOG"
        WS=()
    fi
    WS8=(--switch dtype=float8,VITFAST_FP8_ENGINE=ws)
    if [ "$STEP" = ablateL ] && ! gluon_tested "$OUT_ROOT/tests/tests.jsonl" tests/kernels/test_gemm_fp8_ws.py; then
        echo "=== $STEP: without dtype=float8,VITFAST_FP8_ENGINE=ws: tests/kernels/test_gemm_fp8_ws.py did not pass" \
             "in this machine's test step" | tee -a "$LOG"
        WS8=()
    fi
    if [ "$STEP" = ablate256 ]; then
        # the Gluon engine first: the lever the next change waits for, measured before the step's time runs out
        ARGS=(--batch 256 ${WS[@]+"${WS[@]}"} --switch VITFAST_LN_PARTIALS=0 --switch VITFAST_GELU=libdevice
              --switch VITFAST_STAGGER=0)
    elif [ "$STEP" = ablateL ]; then
        # bf16 as shipped against: FP8 as shipped (issue 13's ratio, cheap: first), the Gluon engine (issue 10's
        # 1.2x compile target), the Gluon FP8 engine, FP8 without the promotion (what fp8ws and fp8acc measure)
        ARGS=(--batch 256 --switch dtype=float8 ${WS[@]+"${WS[@]}"} ${WS8[@]+"${WS8[@]}"}
              --switch dtype=float8,VITFAST_FP8_PRECISE_ACC=0) MODEL=vit_l_16
    else
        # the 128-column statistics slots first: change 29, the newest prediction at batch 1
        ARGS=(--batch 1 --switch VITFAST_STATS_SLOT=128 --switch VITFAST_GEMM_ENGINE=pointer --switch VITFAST_SPLIT_K=1
              --switch VITFAST_TMA_DESC=device --switch VITFAST_PDL=1 --switch VITFAST_LN_PARTIALS=0)
    fi
    ARGS+=(--out "$DIR" --model "$MODEL" --time-budget $(( ${T_LIMIT:-300} - 30 )))
    if [ "$DRY" = 1 ]; then
        export TRITON_INTERPRET=1
        ARGS+=(--batch 2 --dtype float32 --resolution 32 --rounds 2 --repeats 1 --warmup 0 --profile-forwards 1
               --config-overrides embed_dim=64,num_heads=2,mlp_dim=128,depth=2)
    fi
    run "${T_LIMIT:-300}" "$PY" -m benchmarks.ablation "${ARGS[@]}"
    ;;
grid)
    IFS='|' read -r MODELS BATCHES DTYPES BACKENDS <<< "${SLICES[$ARG]}"
    ARGS=(--out "$DIR" --models "$MODELS" --batch-sizes "$BATCHES" --dtypes "$DTYPES" --backends "$BACKENDS"
          --cuda-graphs --warmup 3 --repeats 20 --time-budget "${T_BUDGET:-420}" --no-plots --no-progress)
    if [ "$DRY" = 1 ]; then
        # 224 px as on the GPU: a multiple of every slice's patch size (14, 16, 32)
        ARGS+=(--models "${MODELS%%,*}" --dtypes "${DTYPES%%,*}" --resolution 224 --batch-sizes 1,2 --repeats 1
               --warmup 0 --config-overrides depth=1,embed_dim=64,num_heads=2,mlp_dim=128)
        [ "$BACKENDS" = compile ] && ARGS+=(--compile-mode default)
    fi
    run "${T_LIMIT:-530}" "$PY" -m benchmarks "${ARGS[@]}"
    ;;
merge)
    RUNS=()
    for d in "$CACHE"/runs/headline* "$CACHE"/runs/grid-*; do [ -f "$d/results.json" ] && RUNS+=("$d"); done
    if [ ${#RUNS[@]} -eq 0 ]; then
        echo "error: no headline or grid results under $CACHE/runs: run those steps first" | tee -a "$LOG" >&2
        exit 2
    fi
    run 120 "$PY" -m benchmarks.merge "$DIR" "${RUNS[@]}" --no-plots
    ;;
micro)
    if [ "$DRY" = 1 ]; then
        run 120 "$PY" -m pytest benchmarks/test_kernels_micro.py -q -p no:cacheprovider
    else
        run "${T_LIMIT:-400}" "$PY" -m pytest benchmarks/test_kernels_micro.py -q -p no:cacheprovider \
            -k "${MICRO_K:-vit_b or vit_h}" --benchmark-json="$DIR/micro.json" --benchmark-columns=median,iqr,rounds
    fi
    ;;
esac

if [ "$STEP" != merge ] && [ "$STEP" != lease ]; then  # keep this step's files for `merge` and later steps
    rm -rf "${CACHE:?}/runs/$NAME"
    cp -r "$DIR" "$CACHE/runs/$NAME"
fi
echo "=== $NAME: rc=$RC after $(( $(date +%s) - START )) s; files in $DIR: $(ls "$DIR" | tr '\n' ' ')" | tee -a "$LOG"
exit "$RC"
