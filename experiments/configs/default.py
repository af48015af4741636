"""Embedded default: a tiny random Qwen3-shaped model sampling segmented rollouts on CPU.

Command:
    python launch.py                      # this config, workdir ./workdir/default
    python launch.py --config.sampling.think_budget=32 --workdir=/tmp/run

Expected: a progress bar over `rounds` sampling rounds, then a table with the
mean thinking/response lengths, the truncation rates and decode tokens/s; the
decoded rollouts are written to <workdir>/rollouts.jsonl. Finishes in well
under a minute on 2 CPU cores.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                         # Seed of the parameters and of sampling.
    c.tokenizer = "char"               # 'char' or a directory with tokenizer.json.
    c.checkpoint = ""                  # HF model directory; empty: random init.

    c.model = ml_collections.ConfigDict()
    c.model.model_type = "qwen3"       # llama, qwen2 or qwen3.
    c.model.hidden_size = 64           # Residual width.
    c.model.intermediate_size = 192    # SwiGLU width.
    c.model.num_layers = 2             # Decoder blocks.
    c.model.num_heads = 4              # Query heads.
    c.model.num_kv_heads = 2           # Key/value heads.
    c.model.head_dim = 16              # Head width.
    c.model.dtype = "float32"          # Compute dtype.
    c.model.param_dtype = "float32"    # Parameter dtype.

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1                    # Data-parallel axis.
    c.mesh.fsdp = -1                   # Sharded data-parallel axis; -1 = the rest.
    c.mesh.tensor = 1                  # Tensor-parallel axis.

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 1.0       # 0 = greedy.
    c.sampling.top_k = 0               # 0 = off.
    c.sampling.top_p = 1.0             # 1 = off.
    c.sampling.think_budget = 24       # Thinking tokens before </think> is forced.
    c.sampling.response_budget = 16    # Response tokens, eos included.

    c.batch_size = 16                  # Prompts per round.
    c.rounds = 8                       # Sampling rounds.
    return c
