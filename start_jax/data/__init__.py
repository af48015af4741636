"""The synthetic task world, its judge, tfds builders and the prompt pipeline.

Importing this package registers the ``synthetic`` and ``synthetic_rubric``
rewards (see `start_jax.data.world`). `start_jax.data.pipeline` (which imports
tensorflow_datasets) is loaded on first use.
"""

from start_jax.data import world  # noqa: F401  (registers the synthetic judges)
from start_jax.data.world import Example, generate, golden_response, reward_levels  # noqa: F401
