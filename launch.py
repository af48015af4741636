"""Entry point: the only file that defines flags.

  python launch.py                                   # embedded START default on CPU
  python launch.py --config=experiments/configs/default.py --workdir=/tmp/run \
      --config.stages.s1.steps=20 --config.algo.advantage=rloo

A run resumes from the latest checkpoint in --workdir. Multi-host (TPU VM
slice, several GPU hosts): add --distributed so that every process calls
`jax.distributed.initialize()` before touching devices.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments", "configs",
                           "default.py"),
    "Experiment config file (a get_config() module).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; default ./workdir/<config name>.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Library INFO logs (orbax, tfds) would interleave with the progress bar; -v 0 shows
        # them. (absl's app.run resets a changed default of --verbosity to 0, so it is set here.)
        logging.set_verbosity(logging.WARNING)
    import jax
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from start_jax import train
    name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
    workdir = _WORKDIR.value or os.path.join("workdir", name)
    train.run(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
