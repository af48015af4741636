"""Reading and writing model checkpoints."""

from start_jax.checkpoints.hf import (
    CheckpointError,
    load_pretrained,
    read_config,
    save_pretrained,
)
