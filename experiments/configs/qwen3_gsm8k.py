"""START on a GSM8K-style JSONL with Qwen3-1.7B: a starting point for a real maths run.

Command (one host with 8 GPUs, or a TPU v4-8 / v5e-8; the checkpoint is a local
Hugging Face directory with config.json, *.safetensors, tokenizer.json and
tokenizer_config.json):

  python launch.py --config=experiments/configs/qwen3_gsm8k.py --workdir=runs/gsm8k \
      --config.init_checkpoint=/models/Qwen3-1.7B \
      --config.data.train_path=data/gsm8k_train.jsonl \
      --config.data.test_path=data/gsm8k_test.jsonl

Several hosts: the same command on every host with --distributed (see launch.py).

Data: one JSON object a line, ``{"prompt": "<question>", "reference": "<answer>"}``
or ``{"messages": [{"role": "system", ...}, {"role": "user", ...}], "reference": ...}``
(start_jax.data.builders.jsonl_tasks). Each row goes through Qwen3's chat template
with ``enable_thinking=True``; the sampler writes ``<think>`` (a Qwen3 token), the
thinking (at most 1,024 tokens, then ``</think>`` is forced) and the response (at
most 256 tokens, ending at ``<|im_end|>``). The ``math`` reward checks the
response's last ``\\boxed{}`` against the reference with math-verify.

Schedule (START): s1 trains the thinking tokens only while the frozen initial
policy writes the response (the reward then measures what the thinking gives to a
fixed answerer); s2 trains the response tokens only, the policy answering from its
own thinking. GRPO with 8 completions per prompt, 32 prompts a step (256 rollouts).

Precision: float32 parameters and optimizer, bfloat16 compute in the update and
bfloat16 sampling; every step logs ``logprob_mismatch_mean/max`` (sampler vs
trainer log-probabilities of the sampled tokens), and truncated importance
sampling (``algo.tis_cap=2``) corrects for the difference.

Memory per device, about, on 8 devices with the mesh all FSDP (Qwen3-1.7B:
1.72e9 parameters, 28 layers, hidden 2048, 8 KV heads of 128, tied embeddings):
  * policy parameters, gradients and two AdamW moments in float32:
    4 x 4 B x 1.72e9 = 27.5 GB, sharded: 3.4 GB;
  * the initial policy (KL reference and frozen responder), float32: 0.9 GB;
  * the sampler's KV cache, bfloat16, 256 rows x 1,560 positions x 28 layers x
    2 x 8 x 128 x 2 B = 46 GB, rows sharded: 5.7 GB;
  * the update with remat, per device 256 / 8 / 4 micro-batches = 8 rows x 1,560
    positions: saved residuals 8 x 1,560 x 2048 x 28 x 4 B = 2.9 GB, and one
    layer's attention scores 8 x 16 heads x 1,560^2 x 4 B = 1.2 GB;
  * log-probabilities through the vocabulary in chunks: well under 1 GB.
  In all about 15 GB a device: it fits 40 GB cards with room; on 16 GB TPU cores
  raise micro_batches or lower prompts_per_step.
"""

import ml_collections

from start_jax.train.config import default_config, stage


def get_config():
    c = default_config()
    c.init_checkpoint = "Qwen3-1.7B"  # --config.init_checkpoint=/path/to/Qwen3-1.7B
    c.tokenizer = ""  # The checkpoint's own tokenizer and chat template.
    c.model.dtype = "bfloat16"  # Compute dtype of the update.
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.mesh.fsdp = -1  # Every device shards parameters and rollouts.

    c.prompt.chat_template = True
    c.prompt.template_kwargs = ml_collections.ConfigDict(dict(enable_thinking=True))
    c.prompt.system = ""  # Rows may bring their own system message.

    c.data.source = "jsonl"
    c.data.train_path = "data/gsm8k_train.jsonl"
    c.data.test_path = "data/gsm8k_test.jsonl"
    c.data.prompts_per_step = 32
    c.data.max_prompt_tokens = 256

    c.sampling.temperature = 1.0
    c.sampling.think_budget = 1024
    c.sampling.response_budget = 256
    c.sampling.dtype = "bfloat16"

    c.reward.name = "math"

    c.algo.advantage = "grpo"
    c.algo.group_size = 8
    c.algo.kl_coef = 0.0
    c.algo.tis_cap = 2.0
    c.algo.micro_batches = 4
    c.optim.warmup_steps = 10
    c.optim.max_grad_norm = 1.0

    c.stages.s1 = stage("think", "frozen", steps=200, learning_rate=1e-6)
    c.stages.s2 = stage("response", "self", steps=100, learning_rate=1e-6)

    c.checkpoint.every = 20
    c.checkpoint.keep = 3
    c.eval.every = 25
    c.eval.prompts = 256
    c.log.samples_every = 10
    c.log.samples = 8
    return c
