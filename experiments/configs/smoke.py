"""Smoke configuration: the smallest START run, used by the tests (about 30 s on CPU).

Command:
  python launch.py --config=experiments/configs/smoke.py --workdir=/tmp/smoke

Stage s1 trains the thinking with a frozen responder, stage s2 the response
with the policy as its own responder; checkpoints every 2 steps.
"""

from start_jax.train.config import default_config, stage


def get_config():
    c = default_config()
    c.model.hidden_size = 32
    c.model.intermediate_size = 64
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.num_kv_heads = 1
    c.model.head_dim = 16
    c.model.max_position_embeddings = 256
    c.data.name = "mixed"
    c.data.prompts_per_step = 2
    c.mesh.replicate_uneven = True  # 4 rollouts a step on any number of devices.
    c.sft.steps = 10
    c.sft.batch_size = 8
    c.sft.examples = 256  # The 80 traces 10 steps draw come from these (not all 20,000).
    c.sampling.think_budget = 8
    c.sampling.response_budget = 4
    c.algo.group_size = 2
    c.algo.kl_coef = 0.01
    c.stages.s1 = stage("think", "frozen", steps=4, learning_rate=1e-3)
    c.stages.s2 = stage("response", "self", steps=2, learning_rate=1e-3)
    c.checkpoint.every = 2
    c.eval.every = 3
    c.eval.prompts = 4
    c.log.samples_every = 2
    c.log.progress = False
    return c
