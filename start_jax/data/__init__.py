"""The synthetic task world, its tfds builders and the prompt pipeline.

`start_jax.data.pipeline` (which imports tensorflow_datasets) is loaded only
when imported. The world's judges are `start_jax.rewards.synthetic`.
"""

from start_jax.data import world  # noqa: F401
from start_jax.data.world import Example, generate, golden_response  # noqa: F401
