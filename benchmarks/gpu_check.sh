#!/usr/bin/env bash
# One command for whoever has a GPU: install the GPU extras, run every GPU test, run the GPU benchmark,
# print one table. Meant to finish within 8 minutes on one GPU; writes the table and the logs to $OUT
# when that is set.
#
#   bash benchmarks/gpu_check.sh                        # from anywhere in the repository
#   GPU_CHECK_SKIP_INSTALL=1 bash benchmarks/gpu_check.sh  # the extras are installed already
#   GPU_CHECK_SHAPES="tinyllama-1.1b" bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --cpu-smoke            # the script's own plumbing, on a machine without a GPU
#
# torch with CUDA must be installed already: the `parity` extra pins torch==2.13.0, the CPU build CI uses,
# so this script installs every other requirement of the gpu, parity and test extras and leaves torch alone
# (nothing at all when they import already, as on a machine without network access).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
DEADLINE=$((START + 470))  # 8 minutes, less a margin for writing the results
LOG=$(mktemp -d)
KEEP_LOG=0  # the logs stay in $LOG only when a stage failed after writing them (else $OUT has their copy)
trap '[ "$KEEP_LOG" = 1 ] || rm -rf "$LOG"' EXIT
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1

say() { echo "gpu_check [$((SECONDS - START))s]: $*" >&2; }
fail() {
  say "FAILED: $*"
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && echo "gpu_check FAILED: $*" > "$OUT/gpu_check.md"; fi
  exit 1
}
budget() {  # seconds for a stage: at most $1, and leave $2 for the stages after it
  local left=$((DEADLINE - SECONDS - $2))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}

# 0. A GPU, or a clear stop.
if [ "$SMOKE" = 0 ]; then
  nvidia-smi -L >/dev/null 2>&1 || fail "no NVIDIA GPU is visible (nvidia-smi -L failed). This script measures the \
CuPy path on a GPU; without one, run the test suite (pytest): its CuPy double checks the GPU code path on the CPU."
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || fail "torch with \
CUDA is not installed (or sees no GPU): install the CUDA build of torch first; this script does not replace torch."
fi

# 1. The extras, without torch (skipped when they all import already: the machine may be offline).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package, installed or not
if python -c "import cupy, transformers, tokenizers, gguf, accelerate, google.protobuf, pytest, hypothesis, \
sentencepiece, matplotlib" 2>/dev/null; then
  GPU_CHECK_SKIP_INSTALL=1
fi
if [ "$SMOKE" = 0 ] && [ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]; then
  mapfile -t REQS < <(python - <<'EOF'
import re
text = open("pyproject.toml", encoding="utf-8").read()
for extra in ("gpu", "parity", "test"):
    block = re.search(rf"^{extra} = \[(.*?)\]", text, re.M | re.S).group(1)
    for req in re.findall(r'"([^"]+)"', block):
        if not re.match(r"torch\b", req):
            print(req)
EOF
)
  say "installing the package and ${REQS[*]}"
  timeout "$(budget 150 300)" pip install -q -e . "${REQS[@]}" > "$LOG/install.log" 2>&1 \
    || { tail -20 "$LOG/install.log" >&2; KEEP_LOG=1; fail "pip install failed or took too long (log above)"; }
fi
if [ "$SMOKE" = 0 ]; then
  python -c "from tinyllama_ref.backend import get_module; get_module('cupy')" 2> "$LOG/cupy.log" \
    || fail "CuPy cannot use the GPU: $(tail -1 "$LOG/cupy.log")"
fi

# 2. Every GPU test (the real-CuPy cases of the backend-parametrized tests: `pytest -m gpu`).
say "running the GPU tests"
timeout "$(budget 180 200)" python -m pytest -q -p no:cacheprovider -m gpu -rfEs > "$LOG/tests.log" 2>&1
TESTS_RC=$?
TESTS=$(grep -E "^[0-9]+ (passed|failed|skipped|error)|^=+ .*(passed|failed|skipped|error)" "$LOG/tests.log" | tail -1)
[ "$TESTS_RC" = 124 ] && TESTS="timed out: $TESTS"
say "tests: ${TESTS:-no summary (see $LOG/tests.log)}"

# 3. The benchmark: ours against transformers eager and sdpa, parity, bandwidth, memory.
say "running benchmarks/gpu.py"
if [ "$SMOKE" = 1 ]; then
  BENCH_ARGS=(--cpu-smoke --prompt-tokens 16 --new-tokens 4)
else
  read -r -a SHAPES <<< "${GPU_CHECK_SHAPES:-llama2-7b tinyllama-1.1b smollm2-135m}"
  BENCH_ARGS=(--shapes "${SHAPES[@]}")
fi
timeout "$(budget 260 5)" python benchmarks/gpu.py "${BENCH_ARGS[@]}" --out "$LOG/bench.md" > "$LOG/bench.log" 2>&1
BENCH_RC=$?

# 3b. Tensor parallelism on 2 GPUs: 2 MPI ranks, NCCL through cupyx.distributed, one GPU each, against one
#     process on the CPU (tests/mpi_tensor_parallel.py gpu: the CuPy variants, max |Δlogits| <= 1e-5). It needs
#     a machine with two GPUs, Open MPI and mpi4py; the device tool lends one GPU today, so there it says so.
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$SMOKE" = 0 ] && [ "$NGPU" -ge 2 ] && command -v mpirun >/dev/null && python -c "import mpi4py" 2>/dev/null; then
  say "tensor parallelism on 2 GPUs"
  AS_ROOT=(); [ "$(id -u)" = 0 ] && AS_ROOT=(--allow-run-as-root)
  timeout "$(budget 120 30)" mpirun "${AS_ROOT[@]}" -n 2 -x PYTHONPATH python tests/mpi_tensor_parallel.py gpu \
    "$LOG/tp_gpu.json" 1 > "$LOG/tp_gpu.log" 2>&1
  TP=$(python tests/mpi_tensor_parallel.py summary "$LOG/tp_gpu.json" 2>/dev/null || echo "failed: see $LOG/tp_gpu.log")
else
  TP="not run: it needs 2 GPUs, Open MPI and mpi4py (this machine: $NGPU GPU(s))"
fi
say "tensor parallelism: $TP"

# 4. One report: the tests' outcome, the benchmark's table and targets, the golden parity on CuPy.
{
  echo "# GPU check, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "GPU tests (pytest -m gpu): ${TESTS:-no summary}"
  echo
  echo "Pointwise kernels in the benchmark: $(grep -m1 '^fused kernels: ' "$LOG/bench.log" | cut -d' ' -f3- || true)"
  echo
  echo "Tensor parallelism (NCCL, 2 ranks): $TP"
  echo
  if [ -s "$LOG/bench.md" ]; then cat "$LOG/bench.md"; else
    echo "benchmarks/gpu.py failed (exit $BENCH_RC):"; echo; echo '```'; tail -25 "$LOG/bench.log"; echo '```'; fi
  echo
  echo "Golden checkpoints on real CuPy (max|Δ| against transformers, from the tests):"
  echo
  echo '```'
  sed -n '/golden parity/,$p' "$LOG/tests.log" | grep -E "^(case|[a-z0-9_]+ )" | head -60
  echo '```'
} > "$LOG/report.md"
cat "$LOG/report.md"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$LOG/report.md" "$OUT/gpu_check.md" && cp "$LOG"/*.log "$OUT/" 2>/dev/null
  say "wrote $OUT/gpu_check.md"
fi
say "done in $((SECONDS - START))s"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ] || { KEEP_LOG=1; fail "tests exit $TESTS_RC, benchmark exit $BENCH_RC (logs in $LOG)"; }
