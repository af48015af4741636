"""The features of every task data set: five text fields."""

from __future__ import annotations

import tensorflow_datasets as tfds

FEATURE_NAMES = ("prompt", "reference", "thinking", "family", "metadata")


def text_features() -> tfds.features.FeaturesDict:
    """The features shared by both builders: five text fields."""
    return tfds.features.FeaturesDict({k: tfds.features.Text() for k in FEATURE_NAMES})
