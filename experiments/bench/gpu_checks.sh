#!/usr/bin/env bash
# The measurements at real shape on one GPU (docs/benchmarks.md), as one script that fits
# a short loan of the device: each command has its own time limit and writes its output
# to $OUT/<name>.txt as it goes, so a run cut short keeps what it measured.
#
#   OUT=/tmp/gpu bash experiments/bench/gpu_checks.sh          # one H200: about 8 minutes
#   SMALL=1 OUT=/tmp/gpu bash experiments/bench/gpu_checks.sh  # the same plumbing on CPU
#
# 1. the memory plan of a 1.7B START stage-1 step with an 8k budget, from the device's
#    own compiler (`real_shapes`);
# 2. the update alone at 8 x 8192 tokens, bf16, rematerialised blocks: its MFU
#    (`train_step`);
# 3. whole START stage-1 steps (frozen responder, KL to the initial policy) with a 1k
#    budget, packed rows and length groups alternating: phase times, the update's MFU,
#    the decode bandwidth fraction and the peak memory (`rl_step`);
# 4. google-tunix on the same decode and update shapes, when its package imports
#    (`tunix_peer`; its wheels are carried to the device, see that script).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
if [ "${SMALL:-0}" = 1 ]; then
  MODEL=small DTYPE=float32 LONG=256 BUDGET=64 RESPONSE=16 PROMPTS=2 ROWS=4 NEW=32
else
  MODEL=qwen3_1_7b DTYPE=bfloat16 LONG=8192 BUDGET=1024 RESPONSE=256 PROMPTS=8 ROWS=64 NEW=1024
fi

run() {  # run NAME SECONDS COMMAND...: the output in $OUT/NAME.txt, its status last.
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date +%T), limit ${limit} s): $*" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "   exit $? after $SECONDS s in all" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi 2>/dev/null || true; python -c "import jax; print(jax.__version__, jax.devices())"; } \
  >"$OUT/environment.txt" 2>&1
if [ "$MODEL" = small ]; then SHAPE=qwen3_0_6b; else SHAPE=$MODEL; fi
run real_shapes 120 python -m experiments.bench.real_shapes --shapes "$SHAPE" \
  --budgets "$LONG" --prompts "$PROMPTS" --group 8
run update_8k 150 python -m experiments.bench.train_step --model "$MODEL" --dtype "$DTYPE" \
  --batch 8 --length "$LONG" --micro_batches 8 --remat --kl_coef 0.01 --repeats 3
STEP=(python -m experiments.bench.rl_step --model "$MODEL" --prompts "$PROMPTS" --group 8
  --think_budget "$BUDGET" --response_budget "$RESPONSE" --dtype "$DTYPE" --responder frozen
  --kl_coef 0.01 --remat --micro_batches 8 --warmup 1 --steps 2)
run step_packed 150 "${STEP[@]}" --pack_rows
run step_groups 150 "${STEP[@]}"
if python -c "import tunix" 2>/dev/null; then
  run tunix 150 python -m experiments.bench.tunix_peer --model "$MODEL" --dtype "$DTYPE" \
    --batch "$ROWS" --prompt_len 256 --new_tokens "$NEW" --length 1024
  run ours_decode 120 python -m experiments.bench.rollout --model "$MODEL" --dtype "$DTYPE" \
    --prompts "$PROMPTS" --group 8 --think_budget "$NEW" --response_budget 1 --repeats 2
else
  echo "== tunix: not importable here, skipped" | tee -a "$OUT/summary.txt"
fi
grep -h -E "qwen3|peak|MFU|tokens/s|bandwidth|fits|^update|^rollout|^step " "$OUT"/*.txt \
  >"$OUT/figures.txt" 2>/dev/null || true
