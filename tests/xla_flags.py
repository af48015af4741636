"""XLA flags of every test process, the launch.py subprocesses included (no jax import here:
conftest.py sets them before jax is first imported).

The test processes are bound by XLA:CPU compile time (tiny models, thousands of
programs): LLVM's optimisation level 0 compiles them much faster, and the results stay
within every parity tolerance. Measured on 2 cores: test_train_step.py 167 s -> 105 s;
test_sampling.py with test_fast_paths.py 256 s -> 141 s and 165 s. The launch.py runs the
tests start inherit level 0 (the 3-step smoke run: 40-43 s at the default level, 30 s at
level 0, each from an empty compilation cache), except the cold-start SFT of
test_llama3_first_run.py: 300 steps spend longer running their programs than compiling
them, and took 2.0x as long at level 0.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0"


def device_flags(devices: int, fast_compile: bool = True) -> str:
    """XLA_FLAGS for a process with `devices` simulated CPU devices."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return f"{flags} {FAST_COMPILE}" if fast_compile else flags
