"""Test setup: 8 simulated CPU devices, set before jax is first imported."""

import atexit
import gc
import os
import shutil
import tempfile

from tests.xla_flags import device_flags

# 8 devices, compiled fast (tests/xla_flags.py); the launch.py subprocesses the tests start
# inherit them.
_user_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = (_user_flags + " " + device_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the session, new each time (nothing stale): tests and
# the launch.py subprocesses they start compile many identical programs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="start_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
# Likewise one tfds data_dir for every run that names none (each world data set is generated
# once per session, under a lock); the tests of data_dir handling name their own.
if "START_JAX_DATA_DIR" not in os.environ:
    _data = tempfile.mkdtemp(prefix="start_jax_tests_data_")
    atexit.register(shutil.rmtree, _data, ignore_errors=True)
    os.environ["START_JAX_DATA_DIR"] = _data

import jax  # noqa: E402
import pytest  # noqa: E402

from start_jax import models  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.devices()  # XLA reads XLA_FLAGS here, once.


# Seconds of each file's tests in a clean-clone run of the suite on 2 cores (the files
# over 40 s; the rest take less). `-n 2 --dist loadfile` gives each worker whole files;
# the workers take them heaviest first, so that no long file starts last and runs alone.
FILE_SECONDS = {
    "test_trainer.py": 150,
    "test_notebook.py": 95,
    "test_train_step.py": 90,
    "test_fast_paths.py": 75,
    "test_llama3_first_run.py": 75,
    "test_distributed.py": 70,
    "test_real_path.py": 65,
    "test_sampling.py": 60,
    "test_rl_learns.py": 50,
    "test_models.py": 50,
    "test_attention.py": 45,
    "test_stage_designs.py": 45,
    "test_launch_refusals.py": 41,
}


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below.
        config.option.loadscopereorder = False
    for line in (
        "unit: one function, class or module in process (every test not marked e2e)",
        "e2e: a training run, a launch.py or other subprocess, or the notebook",
        "slow: out of the fast tier (`pytest -m 'not slow'`): every e2e test, and unit tests "
        "that take seconds",
    ):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config, items):
    """Tiers: an e2e test is also slow; every other test is a unit test. Files run
    heaviest first (`FILE_SECONDS`), each file's tests in their own order."""
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), order[id(item)]))
    for item in items:
        if item.get_closest_marker("e2e"):
            if not item.get_closest_marker("slow"):
                item.add_marker(pytest.mark.slow)
        elif not item.get_closest_marker("unit"):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops jax's compiled programs after each module. Every CPU executable holds memory
    mappings of its own, and one process that compiles the whole suite's programs runs
    past the kernel's limit on mappings (vm.max_map_count, 65530 by default), where XLA's
    compiler crashes; the persistent compilation cache still serves repeats from disk."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="module")
def tiny_model():
    """(config, params) of a 16-token tiny model, for the scripted sampling tests."""
    config = models.tiny_config(16)
    return config, models.init_params(config, jax.random.key(1))
