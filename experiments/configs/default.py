"""Embedded default: START on the synthetic world with a tiny model, on CPU.

Command:
  python launch.py                                  # workdir ./workdir/default
  python launch.py --config.stages.s1.steps=20 --workdir=/tmp/start

What it does: cold-start SFT of a random 2-layer Qwen3-shaped model on gold
thinking traces of the mixed synthetic world (arithmetic chains + multi-hop
facts), then START: stage s1 trains the thinking tokens only (response-only
reward, GRPO), stage s2 the response tokens only. Expected: a progress bar,
then a table with the train and eval rewards; a few minutes on 2 CPU cores.
"""

from start_jax.train.config import default_config


def get_config():
    return default_config()
