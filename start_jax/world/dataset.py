"""The world's data sets: named `SyntheticWorld` configs built with tensorflow-datasets
(array_record files, read without TensorFlow) and loaded as `pipeline.DecodedSource`s."""

from __future__ import annotations

import dataclasses
import os

from start_jax.data import pipeline
from start_jax.world.builders.synthetic_world import SyntheticWorld, SyntheticWorldConfig


def synthetic_config(config_name: str, **overrides) -> SyntheticWorldConfig:
    """A named `SyntheticWorld` config, with field overrides and a derived name.

    ``synthetic_config("facts", seed=3, train_size=50)`` is named
    ``facts_s3_n50_200_p850`` so that it is stored apart from ``facts``.
    """
    configs = {c.name: c for c in SyntheticWorld.BUILDER_CONFIGS}
    if config_name not in configs:
        raise ValueError(
            f"unknown synthetic config {config_name!r}; expected one of "
            f"{sorted(configs)} (pass overrides for other sizes or seeds)"
        )
    base = configs[config_name]
    if not overrides:
        return base
    fields = {f.name for f in dataclasses.fields(SyntheticWorldConfig)}
    unknown = set(overrides) - (
        fields - {"name", "version", "release_notes", "supported_versions", "tags", "description"}
    )
    if unknown:
        raise ValueError(f"unknown SyntheticWorldConfig fields {sorted(unknown)}")
    c = dataclasses.replace(base, **overrides)
    c.name = f"{c.family}_s{c.seed}_n{c.train_size}_{c.test_size}_p{round(c.p_misleading * 1000)}"
    c.description = f"{config_name} with {overrides}"
    return c


def load_synthetic(
    config_name: str, data_dir: str | os.PathLike, split: str, **overrides
) -> pipeline.DecodedSource:
    """The ``split`` of a `SyntheticWorld` config (built under ``data_dir`` once).

    ``overrides`` (family, seed, train_size, test_size, p_misleading) make a
    custom config, see `synthetic_config`.
    """
    config = synthetic_config(config_name, **overrides)
    return pipeline.build_source(
        lambda: SyntheticWorld(
            config=config, data_dir=os.fspath(data_dir), file_format=pipeline.FILE_FORMAT
        ),
        split,
    )
