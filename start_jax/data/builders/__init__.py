"""tfds builders of task data sets: a user's JSONL task files here, the embedded world's
in `start_jax.world.builders`.

Both write array_record files and are read with ``builder.as_data_source(split)``
(no TensorFlow needed); `start_jax.data.pipeline` wraps building and reading.
"""

from start_jax.data.builders.jsonl_tasks import JsonlConfig, JsonlTasks, read_jsonl  # noqa: F401
