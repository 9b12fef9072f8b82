#!/usr/bin/env bash
# The GPU checks of the fused kernels in one command: the `gpu` tests and the benchmarks.
#
#   bash tools/gpu_checks.sh [stage ...]      (default: every stage, in this order)
#
# stages: env tests attention attention-fast profile normalizers lm_head step
#   attention       tools/bench_attention.py, every method (SDPA, kernel, compiled, Flex)
#   attention-fast  the same grid, SDPA vs the kernel (both backwards) only (no torch.compile time)
#   profile         tools/profile_flash.py --causal at d 64 and 128: each kernel alone,
#                   the two-kernel vs the one-pass backward
# Each stage runs under its own time limit (seconds; STAGE_LIMIT_<stage> overrides) and
# logs to $LOG_DIR/<stage>.log (default runs/gpu_checks); a failing or timed-out stage is
# reported and the next one runs. PYTHON picks the interpreter (default python3);
# PYTEST_ARGS adds pytest options (e.g. '-n 8' with pytest-xdist).
set -u
LOG_DIR=${LOG_DIR:-runs/gpu_checks}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$LOG_DIR"

declare -A LIMIT=([env]=60 [tests]=240 [attention]=540 [attention-fast]=180 [profile]=240
                  [normalizers]=90 [lm_head]=90 [step]=150)

run_stage() {
    local stage=$1; shift
    local var="STAGE_LIMIT_${stage//-/_}" limit
    limit=${!var:-${LIMIT[$stage]}}
    local start=$SECONDS
    echo "=== $stage (limit ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$LOG_DIR/$stage.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $stage: exit $rc after $((SECONDS - start)) s"
}

stage() {
    case $1 in
        env) run_stage env "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', \
triton.__version__, torch.cuda.get_device_name(), 'cuda', torch.version.cuda)" ;;
        tests) run_stage tests "$PY" -m pytest -q -m gpu -p no:cacheprovider ${PYTEST_ARGS:-} \
            tests/nn/test_multimax_kernel.py tests/nn/test_multimax_kernel_dispatch.py \
            tests/normalizers/test_triton_sparse.py \
            tests/nn/test_lm_head.py tests/test_precision.py ;;
        attention) run_stage attention "$PY" tools/bench_attention.py ;;
        attention-fast) run_stage attention-fast "$PY" tools/bench_attention.py --methods sdpa multimax multimax-fused ;;
        profile) run_stage profile bash -c "'$PY' tools/profile_flash.py --causal && \
            '$PY' tools/profile_flash.py --causal --head-dim 128" ;;
        normalizers) run_stage normalizers "$PY" tools/bench_normalizers.py --device cuda ;;
        lm_head) run_stage lm_head "$PY" tools/bench_lm_head.py ;;
        step) run_stage step "$PY" tools/bench_step.py --batch-size 256 ;;
        *) echo "unknown stage '$1' (stages: env tests attention attention-fast profile normalizers lm_head step)" >&2
           exit 2 ;;
    esac
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(env tests attention normalizers lm_head step)
for s in "${stages[@]}"; do stage "$s"; done
