"""tfds builder of the synthetic world (`start_jax.world.generator`).

Configs ``arith``, ``facts`` and ``mixed`` (seed 0, 20000 train / 200 test
examples); build another with ``SyntheticWorld(config=SyntheticWorldConfig(
name=..., family=..., seed=..., train_size=..., test_size=...))``. The train
split is generated from seed ``seed * 1000`` and the test split from
``seed * 1000 + 1``; test prompts come only from the held-out eighth of the
prompt space and train prompts never do (`world.is_held_out`,
`world.generate_splits`), so no config's train split holds another's test prompt.
Features are all text: prompt, reference, thinking, family and metadata (a JSON
object; it includes ``family``).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from start_jax.data.builders.features import text_features
from start_jax.world import generator as world


@dataclasses.dataclass(eq=False)
class SyntheticWorldConfig(tfds.core.BuilderConfig):
    """A synthetic world: task family, seed and split sizes."""

    family: str = "mixed"  # arith | facts | mixed.
    seed: int = 0  # Splits use seed*1000 + k.
    train_size: int = 20000
    test_size: int = 200
    p_misleading: float = world.P_MISLEADING  # facts: answer rarer than a distractor.

    def __post_init__(self):
        if self.family not in world.FAMILIES + ("mixed",):
            raise ValueError(
                f"SyntheticWorldConfig {self.name!r}: unknown family "
                f"{self.family!r}; expected arith, facts or mixed"
            )
        if self.train_size < 1 or self.test_size < 0:
            raise ValueError(
                f"SyntheticWorldConfig {self.name!r}: bad split sizes "
                f"train={self.train_size} test={self.test_size}"
            )


class SyntheticWorld(tfds.core.GeneratorBasedBuilder):
    """The synthetic task world: arithmetic chains and multi-hop facts."""

    VERSION = tfds.core.Version("3.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "arith: 3-4 variables, + and - only, values 0..19; 20000 train rows.",
        "3.0.0": "test prompts come from a held-out eighth of the prompt space "
        "(world.is_held_out), never in any config's train split.",
    }
    BUILDER_CONFIGS = [
        SyntheticWorldConfig(name=f, family=f, description=f"{f} family, seed 0")
        for f in ("arith", "facts", "mixed")
    ]
    DEFAULT_CONFIG_NAME = "mixed"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=text_features(),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        splits = world.generate_splits(
            c.family,
            {"train": c.train_size, "test": c.test_size},
            c.seed,
            p_misleading=c.p_misleading,
        )
        return {
            name: self._generate_examples(examples) for name, examples in splits.items() if examples
        }

    def _generate_examples(self, examples):
        for i, example in enumerate(examples):
            yield i, example.to_row()
