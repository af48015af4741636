"""Embedded default: START on the synthetic world's GQA family with a tiny model, on CPU.

Command:
  python launch.py                                  # workdir ./workdir/default
  python launch.py --config.stages.s1.steps=40 --workdir=/tmp/start

What it does: builds the ``facts`` data set (multi-hop questions judged by a
rubric with a documented shortcut), trains a random 2-layer, 64-wide
Qwen3-shaped model by cold-start SFT on the behaviour mixture of
`start_jax.world.behaviours` (complete, sloppy and no thinking; plain or styled
responses; 4000 steps), then runs START: stage s1 trains the thinking tokens
only (response-only reward, GRPO, 16 prompts x 8 rollouts) for 24 steps, stage
s2 the response tokens only for 12 steps.

Expected (measured on 2 CPU cores, about 80 s in all): a progress bar, then a
table in which the train reward and the behaviour rates move between the first
and the last three steps: reward 0.57 -> 0.78, complete thinking 0.45 -> 0.69,
empty thinking 0.18 -> 0.00, styled responses 0.29 -> 0.94.
"""

from start_jax.train.config import default_config


def get_config():
    return default_config()
