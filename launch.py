"""Entry point: the only file that defines flags.

  python launch.py                                   # embedded START default on CPU
  python launch.py --config=experiments/configs/default.py --workdir=/tmp/run \
      --config.stages.s1.steps=20 --config.algo.advantage=rloo

A run resumes from the latest checkpoint in --workdir. Multi-host (TPU VM
slice, several GPU hosts): add --distributed so that every process calls
`jax.distributed.initialize()` before touching devices. A bad config, file or
data line ends the run with one line naming it (exit status 2); --traceback
shows the full traceback instead.
"""

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments",
                              "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Experiment config file (a get_config() module).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; default ./workdir/<config name>.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a bad-input error.")


def _fail(message: str) -> None:
    print(f"launch.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_file(argv) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return DEFAULT_CONFIG


def _unknown_override(argv) -> str | None:
    """The first --config.a.b override naming a field the config file does not have."""
    path = _config_file(argv)
    spec = importlib.util.spec_from_file_location("_launch_config", path.split(":")[0])
    if spec is None or not os.path.isfile(path.split(":")[0]):
        return f"--config={path}: no such config file"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        keys = arg[len("--config."):].split("=", 1)[0].split(".")
        node, walked = config, []
        for key in keys:
            if not hasattr(node, "keys") or key not in node.keys():
                where = f"under '{'.'.join(walked)}'" if walked else "at the top level"
                known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
                return (f"{arg.split('=', 1)[0]}: unknown config field '{'.'.join(walked + [key])}' "
                        f"(known keys {where}: {known})")
            node, walked = node[key], walked + [key]
    return None


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        # ml_collections reports an override of a missing field as a bare KeyError('x').
        _fail(_unknown_override(argv) or f"bad --config override: {e}")


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
    from start_jax.errors import TrainingError, UserError
    name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
    workdir = _WORKDIR.value or os.path.join("workdir", name)
    try:
        train.run(_CONFIG.value, workdir)
    except UserError as e:
        if _TRACEBACK.value:
            raise
        kept = (f" (the checkpoints in {os.path.abspath(workdir)}/checkpoints are kept)"
                if isinstance(e, TrainingError) else "")
        _fail(f"{e}{kept}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
