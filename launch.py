"""Entry point: the only file that defines flags.

    python launch.py                                   # embedded default on CPU
    python launch.py --config=experiments/configs/default.py --workdir=/tmp/run \
            --config.sampling.think_budget=32

Multi-host (TPU VM slice, multi-GPU host): add --distributed so that every
process calls `jax.distributed.initialize()` before touching devices.
"""

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
        "config", os.path.join(os.path.dirname(__file__), "experiments", "configs", "default.py"),
        "Experiment config file (a get_config() module).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; default ./workdir/<config name>.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")


def main(argv):
    del argv
    import jax
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from start_jax import demo
    config_path = flags.FLAGS["config"].config_filename
    name = os.path.splitext(os.path.basename(config_path))[0]
    workdir = _WORKDIR.value or os.path.join("workdir", name)
    demo.run(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
