#!/usr/bin/env bash
# The measurements at real shape on one GPU (docs/benchmarks.md), as one script that fits
# a short session on the device: each command has its own time limit, nothing starts past
# DEADLINE seconds (default 600), and each command's output goes to $OUT/<name>.txt as it
# runs, so a run cut short keeps what it measured. Most important first.
#
#   OUT=/tmp/gpu bash experiments/bench/gpu_checks.sh          # one H200
#   SMALL=1 OUT=/tmp/gpu bash experiments/bench/gpu_checks.sh  # the same plumbing on CPU
#   WHEELS=.whl OUT=/tmp/gpu bash experiments/bench/gpu_checks.sh  # install carried wheels
#
# 1. the update alone at 8 x 8192 tokens, bf16, rematerialised blocks: its MFU
#    (`train_step`);
# 2. START stage-1 steps (frozen responder, KL to the initial policy), 8 prompts x 8 with a
#    1k budget, packed rows: phase times, the update's MFU, the decode bandwidth fraction
#    and the peak memory (`rl_step`);
# 3. google-tunix's decode and GRPO update at 64 rows x (256 + 1024) tokens, when its
#    package imports (`tunix_peer`; its wheels: see that script), then ours on the same
#    shapes (`rollout` with one prefill per prompt, `train_step`);
# 4. the step of 2 with length groups instead of packed rows;
# 5. the memory plan of a 1.7B START stage-1 step with an 8k budget from the device's own
#    compiler (`real_shapes`).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_checks}
DEADLINE=${DEADLINE:-600}
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  python -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "${SMALL:-0}" = 1 ]; then
  MODEL=small DTYPE=float32 LONG=256 BUDGET=64 RESPONSE=16 PROMPTS=2 ROWS=8 PROMPT=32 NEW=32
  SHAPE=qwen3_0_6b
else
  MODEL=qwen3_1_7b DTYPE=bfloat16 LONG=8192 BUDGET=1024 RESPONSE=256 PROMPTS=8 ROWS=64
  PROMPT=256 NEW=1024 SHAPE=qwen3_1_7b
fi

run() {  # run NAME SECONDS COMMAND...: the output in $OUT/NAME.txt, its status in summary.
  local name=$1 limit=$2
  shift 2
  if [ "$SECONDS" -ge "$DEADLINE" ]; then
    echo "== $name: skipped (past DEADLINE=$DEADLINE s)" | tee -a "$OUT/summary.txt"
    return
  fi
  echo "== $name ($(date +%T), limit ${limit} s): $*" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "   exit $? after $SECONDS s in all" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi 2>/dev/null || true; python -c "import jax; print(jax.__version__, jax.devices())"; } \
  >"$OUT/environment.txt" 2>&1
run update_8k 150 python -m experiments.bench.train_step --model "$MODEL" --dtype "$DTYPE" \
  --batch 8 --length "$LONG" --micro_batches 8 --remat --kl_coef 0.01 --repeats 3
STEP=(python -m experiments.bench.rl_step --model "$MODEL" --prompts "$PROMPTS" --group 8
  --think_budget "$BUDGET" --response_budget "$RESPONSE" --dtype "$DTYPE" --responder frozen
  --kl_coef 0.01 --remat --micro_batches 8 --warmup 1 --steps 2)
run step_packed 150 "${STEP[@]}" --pack_rows
if python -c "import tunix" 2>/dev/null; then
  run tunix 240 python -m experiments.bench.tunix_peer --model "$MODEL" --dtype "$DTYPE" \
    --batch "$ROWS" --prompt_len "$PROMPT" --new_tokens "$NEW" --micro_batches 8 --kl_coef 0 \
    --repeats 3
  run ours_update 120 python -m experiments.bench.train_step --model "$MODEL" --dtype "$DTYPE" \
    --batch "$ROWS" --length $((PROMPT + NEW)) --prompt "$PROMPT" --micro_batches 8 \
    --kl_coef 0 --repeats 3
  run ours_decode 120 python -m experiments.bench.rollout --model "$MODEL" --dtype "$DTYPE" \
    --prompts $((ROWS / 8)) --group 8 --think_budget "$NEW" --response_budget 1 --eos_rate 0 \
    --end_think_rate 0 --repeats 3
else
  echo "== tunix: not importable here, skipped" | tee -a "$OUT/summary.txt"
fi
run step_groups 150 "${STEP[@]}"
run real_shapes 120 python -m experiments.bench.real_shapes --shapes "$SHAPE" \
  --budgets "$LONG" --prompts "$PROMPTS" --group 8
grep -h -E "qwen3|peak|MFU|tokens/s|bandwidth|fits|^update|^rollout|^step " "$OUT"/*.txt \
  >"$OUT/figures.txt" 2>/dev/null || true
