"""The tfds builder of the embedded world (a package folder, as tfds requires)."""

from start_jax.world.builders.synthetic_world import (  # noqa: F401
    SyntheticWorld,
    SyntheticWorldConfig,
)
