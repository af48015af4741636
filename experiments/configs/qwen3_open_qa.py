"""START on open questions judged by a generative judge, with Qwen3-1.7B.

Command (one host with 8 GPUs or a TPU v4-8 / v5e-8):

  python launch.py --config=experiments/configs/qwen3_open_qa.py --workdir=runs/open_qa \
      --config.init_checkpoint=/models/Qwen3-1.7B \
      --config.reward.kwargs.checkpoint=/models/Qwen3-8B \
      --config.data.train_path=data/qa_train.jsonl --config.data.test_path=data/qa_test.jsonl

Data: ``{"prompt": "<question>", "reference": "<a reference answer>"}`` a line (or
``messages``), rendered by Qwen3's chat template with thinking enabled.

Reward: the ``judge`` reward (start_jax.rewards.judge): the judge checkpoint
reads a rubric with the question, the reference and the response (never the
thinking), writes "Score: N" (0 to 10) with its own thinking off
(``enable_thinking=False``), greedy, at most 16 tokens; N / 10 is the reward. An
output without a score stops the run with the judge's text (set
``--config.reward.kwargs.on_unparsable=zero`` to score it 0 instead). The judge
runs in bfloat16 on one device, 64 rows a call.

Schedule and precision as in qwen3_gsm8k.py (START s1 thinking with the frozen
responder, s2 response; bf16 sampling with truncated importance sampling), with a
shorter response budget (256) and a 768-token thinking budget.

Memory per device, about, on 8 devices all FSDP: the policy as in qwen3_gsm8k.py
(parameters, gradients, AdamW moments and reference: 4.3 GB; KV cache of 256 rows x
1,300 positions: 4.8 GB; the update with remat: 3.4 GB), plus on the judge's device
its bfloat16 weights (Qwen3-8B: 16.4 GB; Qwen3-1.7B: 3.4 GB) and a cache of 64 rows
x (rubric + response, about 700) positions x 36 layers x 2 x 8 x 128 x 2 B = 6.6 GB.
About 36 GB on that device with an 8B judge: use 40 GB or larger cards, or a
1.7B-4B judge (or batch_size=16) on 16-24 GB ones.
"""

import ml_collections

from experiments.configs import qwen3_gsm8k
from start_jax.train.config import stage


def get_config():
    c = qwen3_gsm8k.get_config()
    c.data.train_path = "data/qa_train.jsonl"
    c.data.test_path = "data/qa_test.jsonl"
    c.sampling.think_budget = 768
    c.sampling.response_budget = 256
    c.reward.name = "judge"
    c.reward.kwargs = ml_collections.ConfigDict(
        dict(
            checkpoint="Qwen3-8B",  # --config.reward.kwargs.checkpoint=/path
            template_kwargs=dict(enable_thinking=False),
            max_new_tokens=16,
            batch_size=64,
            min_score=0,
            max_score=10,
            on_unparsable="error",
            dtype="bfloat16",
        )
    )
    c.stages.s1 = stage("think", "frozen", steps=200, learning_rate=1e-6)
    c.stages.s2 = stage("response", "self", steps=100, learning_rate=1e-6)
    return c
