"""tfds builders for the synthetic world and for a user's JSONL task files.

Both write array_record files and are read with ``builder.as_data_source(split)``
(no TensorFlow needed); `start_jax.data.pipeline` wraps building and reading.
"""

from start_jax.data.builders.jsonl_tasks import JsonlConfig, JsonlTasks, read_jsonl  # noqa: F401
from start_jax.data.builders.synthetic_world import (  # noqa: F401
    SyntheticWorld,
    SyntheticWorldConfig,
)
