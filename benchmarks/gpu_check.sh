#!/usr/bin/env bash
# The GPU checks of the sampler placements (resources.sampler_device), in one run for a
# session with a lent GPU (at most 9.5 minutes: the steps' timeouts, 210 + 330 s, fit one
# 600-second device command; about 6 minutes expected on one H200):
#   1. the gpu-marked tests: what `make test-gpu` runs, without its install step (the lent
#      machine reaches no package index) and collecting only the files that hold them: GPU-sampled batches equal to the CPU's, the
#      uniform and weighted draws' laws, training with the sampler on cuda / pinned;
#   2. benchmarks/bench_train_gpu.py at batch 512 and 4,096: one rank, gloo on the CPU as the
#      reference, then NCCL with the sampler on cpu, cuda and pinned; events/s, the time
#      split and sampling share, the sampler arrays' bytes per edge, peak GPU memory.
#
# Usage (from anywhere; it runs in the repository root):
#   GRAPH=<graph store> bash benchmarks/gpu_check.sh
# Environment: GRAPH (default runs/local/graph: the default data, `make demo`'s store),
# EVENTS (20000), BATCHES (512,4096), PLACEMENTS (cpu,cuda,pinned), PYTHON (python3),
# CPU_RUN (1; 0 skips the gloo reference run on the CPU, about 40 s),
# OUT (where the JSON and logs go; default runs/gpu_check).
# Exit status: 2 without a GPU or a store (at once), else that of the first failing step.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

PY=${PYTHON:-python3}
GRAPH=${GRAPH:-runs/local/graph}
EVENTS=${EVENTS:-20000}
BATCHES=${BATCHES:-512,4096}
PLACEMENTS=${PLACEMENTS:-cpu,cuda,pinned}
OUT_DIR=${OUT:-runs/gpu_check}
CPU_FLAG=()
[ "${CPU_RUN:-1}" = "0" ] && CPU_FLAG=(--no-cpu-run)

fail() { echo "gpu_check: $*" >&2; exit 2; }

command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
  || fail "no GPU here (nvidia-smi finds none); run this on a machine with one"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || fail "$PY's torch sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1))"
[ -d "$GRAPH" ] || fail "no graph store at $GRAPH (set GRAPH=<store>, e.g. make demo's runs/local/graph)"
mkdir -p "$OUT_DIR" || fail "cannot create $OUT_DIR"

status=0
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv \
  | tee "$OUT_DIR/nvidia_smi.csv"

echo "== 1/2 gpu tests"
# Only the files that hold gpu tests: collecting all of tests/ would import Spark and Ray,
# which a bare GPU box may lack.
mapfile -t GPU_TESTS < <(grep -l "mark.gpu" tests/test_*.py)
echo "files: ${GPU_TESTS[*]}"
timeout 210 "$PY" -m pytest -m gpu -q -p no:cacheprovider "${GPU_TESTS[@]}" 2>&1 | tee "$OUT_DIR/test_gpu.log"
test_status=${PIPESTATUS[0]}
[ "$test_status" -eq 0 ] || { echo "gpu_check: the gpu tests failed ($test_status)" >&2; status=$test_status; }

echo "== 2/2 training benchmark (batches $BATCHES, sampler on $PLACEMENTS)"
timeout 330 "$PY" benchmarks/bench_train_gpu.py --require-gpu --graph "$GRAPH" --events "$EVENTS" \
  --batch-sizes "$BATCHES" --sampler-device "$PLACEMENTS" "${CPU_FLAG[@]}" \
  --out "$OUT_DIR/bench_train_gpu.json" \
  2>&1 | tee "$OUT_DIR/bench_train_gpu.log"
bench_status=${PIPESTATUS[0]}
[ "$bench_status" -eq 0 ] || { echo "gpu_check: the benchmark failed ($bench_status)" >&2; [ "$status" -ne 0 ] || status=$bench_status; }

echo "gpu_check: done (status $status); results in $OUT_DIR"
exit "$status"
