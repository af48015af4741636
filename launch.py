"""Entry point: the only file that defines flags.

  python launch.py                                   # embedded START default on CPU
  python launch.py --config=experiments/configs/default.py --workdir=/tmp/run \
      --config.stages.s1.steps=20 --config.algo.advantage=rloo

A run resumes from the latest checkpoint in --workdir. A bad config, file or
data line ends the run with one line naming it (exit status 2); --traceback
shows the full traceback instead.

Multi-host (a TPU VM slice, several GPU hosts): run the same command on every
host with --distributed, so that each process calls `jax.distributed.initialize()`
before touching devices; the mesh then spans the devices of all hosts. On TPU
and under SLURM or Open MPI the processes find each other by themselves; elsewhere
name process 0's address, the number of processes and each one's index. Two GPU
hosts, the first reachable as host0:

  host0$ python launch.py --config=experiments/configs/default.py --workdir=/shared/run \
      --distributed --coordinator_address=host0:1234 --num_processes=2 --process_id=0
  host1$ python launch.py --config=experiments/configs/default.py --workdir=/shared/run \
      --distributed --coordinator_address=host0:1234 --num_processes=2 --process_id=1

--workdir should be one directory that all hosts see (NFS or another shared
disk): process 0 builds the data sets and the cold-start policy there while the
others wait, every process writes its shards of the orbax checkpoints there, and
process 0 alone writes metrics.jsonl, samples.jsonl, tensorboard/ and export/.
Every process computes the same metrics; a checkpoint resumes with another
number of processes (one process with all the devices, for instance). On CPU the
processes use gloo collectives (tests/test_distributed.py runs two processes of
4 CPU devices each on one machine).
"""

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "experiments", "configs", "default.py"
)


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


def _load_config(argv):
    """The config file's `get_config()` result, or a one-line error naming the file."""
    path = _config_file(argv).split(":")[0]
    if not os.path.isfile(path):
        _fail(f"--config={path}: no such config file")
    spec = importlib.util.spec_from_file_location("_launch_config", path)
    if spec is None:
        _fail(f"--config={path}: not a Python file (a config file defines get_config())")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        _fail(f"--config={path} line {e.lineno}: {e.msg}")
    except Exception as e:  # noqa: BLE001 - any error of the user's module, named by its file.
        _fail(f"--config={path}: loading it raised {type(e).__name__}: {e}")
    if not callable(getattr(module, "get_config", None)):
        _fail(
            f"--config={path}: defines no get_config() (a config file returns its "
            "ml_collections.ConfigDict from get_config())"
        )
    try:
        return module.get_config()
    except Exception as e:  # noqa: BLE001
        _fail(f"--config={path}: get_config() raised {type(e).__name__}: {e}")


def _unknown_override(argv) -> str | None:
    """The first --config.a.b override naming a field the config file does not have."""
    config = _load_config(argv)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        keys = arg[len("--config.") :].split("=", 1)[0].split(".")
        node, walked = config, []
        for key in keys:
            if not hasattr(node, "keys") or key not in node.keys():
                if walked and walked[-1] in ("kwargs", "template_kwargs"):
                    free = ".".join(walked)
                    return (
                        f"{arg.split('=', 1)[0]}: the config file sets no '{free}.{key}', "
                        "and an override can only change a field the file has; add "
                        f"c.{free}.{key} = ... to the config file (known: "
                        f"{', '.join(sorted(node.keys())) or 'none'})"
                    )
                where = f"under '{'.'.join(walked)}'" if walked else "at the top level"
                known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
                return (
                    f"{arg.split('=', 1)[0]}: unknown config field '{'.'.join(walked + [key])}' "
                    f"(known keys {where}: {known})"
                )
            node, walked = node[key], walked + [key]
    return None


try:
    # The config file is loaded (and --config.* overrides applied) here, at definition,
    # when --config is not given: a bad override fails here.
    _CONFIG = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Experiment config file (a get_config() module)."
    )
except (KeyError, AttributeError, ValueError, TypeError) as _e:
    _fail(_unknown_override(sys.argv) or f"bad --config override: {_e}")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory; default ./workdir/<config name>."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: call jax.distributed.initialize() (see the docstring)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "With --distributed: host:port of process 0's coordinator "
    "(default: auto-detected on TPU / SLURM / Open MPI, or $JAX_COORDINATOR_ADDRESS).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: the number of processes (default: auto-detected)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "With --distributed: this process's index, 0 to num_processes-1 (default: auto-detected).",
)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of a bad-input error.")


def _parse_flags(argv):
    if not any(a in ("--traceback", "--helpfull", "--help", "-h") for a in argv):
        _load_config(argv)  # A missing or broken config file: one line naming it.
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        # ml_collections reports an override of a missing field as a bare KeyError('x').
        _fail(_unknown_override(argv) or f"bad --config override: {e}")


def _initialize_distributed(jax) -> None:
    """`jax.distributed.initialize` with the flags given (none: plain `initialize()`,
    which detects TPU slices, SLURM and Open MPI by itself)."""
    # Collectives between processes computing on CPU: gloo (jax's default in
    # recent versions; set here for those without one). Must be set before any backend starts.
    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {
        k: v
        for k, v in (
            ("coordinator_address", _COORDINATOR.value),
            ("num_processes", _NUM_PROCESSES.value),
            ("process_id", _PROCESS_ID.value),
        )
        if v is not None
    }
    jax.distributed.initialize(**kwargs)
    # A first collective while all processes are here: gloo sets up its connections then
    # (it waits only 30 s for that), so later waits (process 0 building the data) are safe.
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("launch.py: processes started")


def _check_flags() -> None:
    """Flags that only mean something together, and the workdir, before any work."""
    given = [
        f"--{f.name}" for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None
    ]
    if given and not _DISTRIBUTED.value:
        _fail(
            f"{', '.join(given)} without --distributed would be ignored and this process "
            "would train alone; add --distributed (or drop them for a single-host run)"
        )
    n, i = _NUM_PROCESSES.value, _PROCESS_ID.value
    if n is not None and n < 1:
        _fail(f"--num_processes={n} must be >= 1")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        _fail(f"--process_id={i} must be in 0..{'num_processes-1' if n is None else n - 1}")
    if _WORKDIR.value and os.path.exists(_WORKDIR.value) and not os.path.isdir(_WORKDIR.value):
        _fail(
            f"--workdir={_WORKDIR.value} is an existing file, not a directory; "
            "choose another --workdir"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Library INFO logs (orbax, tfds) would interleave with the progress bar; -v 0 shows
        # them. (absl's app.run resets a changed default of --verbosity to 0, so it is set here.)
        logging.set_verbosity(logging.WARNING)
    _check_flags()
    import jax

    if _DISTRIBUTED.value:  # One process per host; all run this same command.
        try:
            _initialize_distributed(jax)
        except Exception as e:  # noqa: BLE001 - jax raises several kinds; all end the same way.
            if _TRACEBACK.value:
                raise
            _fail(
                f"--distributed: jax.distributed.initialize failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); check --coordinator_address, "
                "--num_processes and --process_id, or run where they are detected (TPU, "
                "SLURM, Open MPI)"
            )
    from start_jax import train
    from start_jax.errors import TrainingError, UserError

    name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
    workdir = _WORKDIR.value or os.path.join("workdir", name)
    try:
        train.run(_CONFIG.value, workdir)
    except UserError as e:
        if _TRACEBACK.value:
            raise
        kept = (
            f" (the checkpoints in {os.path.abspath(workdir)}/checkpoints are kept)"
            if isinstance(e, TrainingError)
            else ""
        )
        _fail(f"{e}{kept}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
