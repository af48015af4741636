"""XLA flags of every test process, the launch.py subprocesses included (no jax import here:
conftest.py sets them before jax is first imported).

The suite is bound by XLA:CPU compile time (tiny models, thousands of programs): LLVM's
optimisation level 0 compiles them much faster, and the results stay within every parity
tolerance. Measured on 2 cores: test_train_step.py 167 s -> 105 s; test_sampling.py with
test_fast_paths.py 256 s -> 141 s and 165 s.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0"


def device_flags(devices: int) -> str:
    """XLA_FLAGS for a process with `devices` simulated CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
