"""The embedded synthetic world as a task (`data.source='synthetic'`): its data sets
(`world.generator`, built with tensorflow-datasets), its cold-start behaviour mixture
(`world.behaviours`), its classifier (`world.classify`) and its judges
(`world.judges`)."""

from __future__ import annotations

from start_jax.tasks.base import Task, register
from start_jax.world import behaviours, classify, dataset, judges

# The thinking and response classes in the final table, with their labels.
SUMMARY_RATES = (
    ("think_complete", "complete thinking"),
    ("think_empty", "empty thinking"),
    ("response_correct", "correct response"),
    ("response_salient", "salient (shortcut)"),
    ("styled", "styled response"),
)


class WorldTask(Task):
    name = "synthetic"
    description = "the embedded world's tasks"
    own_rewards = judges.JUDGES
    decodes_every_row = True

    def load(self, split, name, train_path, test_path, data_dir):
        del train_path, test_path
        return dataset.load_synthetic(name, data_dir, split)

    def trace_options(self, fields):
        return behaviours.Mixture(**fields)

    def sft_traces(self, examples, mixture, seed, draws):
        return behaviours.mixture_traces(examples, mixture, seed=seed, draws=draws)

    def behaviour_metrics(self, rows):
        return classify.behaviour_rates(rows)

    def summary_rows(self, history, move):
        families = sorted(
            {key.split("/")[1] for r in history for key in r if key.startswith("behaviour/")}
        )
        rows = []
        for fam in families:
            for key, label in SUMMARY_RATES:
                if any(f"behaviour/{fam}/{key}" in r for r in history):
                    rows.append((f"  {fam}: {label}", move(f"behaviour/{fam}/{key}")))
            if any(f"behaviour/{fam}/steps_correct" in r for r in history):
                rows.append(
                    (f"  {fam}: thinking steps correct", move(f"behaviour/{fam}/steps_correct"))
                )
        return rows


WORLD = register(WorldTask())
