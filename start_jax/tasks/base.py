"""The task interface: what a run trains on, kept out of the trainer.

A task (one per `data.source`) gives the train and test examples, the
cold-start traces, the per-step behaviour metrics read from decoded rows, the
task's own rows of the final table, and the rewards that only it can judge.
`train/` reaches a task only through `get(data.source)`.
"""

from __future__ import annotations

import abc
from typing import Callable, Sequence

from start_jax.errors import ConfigError


class Task(abc.ABC):
    """One data source. Subclasses set `name`, define `load` and `sft_traces`, and override
    what else they have; the defaults are a task without behaviour metrics or rewards of
    its own."""

    name: str = ""
    # In error messages: "judges only {description}".
    description: str = ""
    # Rewards that judge only this task's examples (refused with any other data source).
    own_rewards: tuple[str, ...] = ()
    # Whether `behaviour_metrics` reads every row's text (the trainer then decodes every
    # rollout row each step, not only the rows it writes out).
    decodes_every_row: bool = False

    @abc.abstractmethod
    def load(self, split: str, name: str, train_path: str, test_path: str, data_dir: str):
        """The `split` ("train" or "test") as a random-access source of example dicts
        (prompt, reference, family, metadata)."""

    def trace_options(self, fields: dict):
        """The options of `sft_traces` from the run's ``sft.mixture`` section; raises
        TypeError or ValueError naming a bad field. By default the fields as given."""
        return dict(fields)

    @abc.abstractmethod
    def sft_traces(self, examples: Sequence[dict], mixture, seed: int, draws: int) -> list[dict]:
        """Cold-start SFT traces: each example dict with its "thinking" and "response"."""

    def behaviour_metrics(self, rows: Sequence[dict]) -> dict[str, float]:
        """Metrics of one step's decoded rows (`sampling.decode_segments` rows with their
        example's reference and family); {} when the task has none."""
        del rows
        return {}

    def summary_rows(
        self, history: Sequence[dict], move: Callable[[str], str]
    ) -> list[tuple[str, str]]:
        """The task's rows of the final table from the metrics history; `move(key)` formats
        a metric's change from the first steps to the last."""
        del history, move
        return []


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Adds `task` under its name (a `data.source` value)."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} has no name")
    _TASKS[task.name] = task
    return task


def registered() -> tuple[str, ...]:
    return tuple(sorted(_TASKS))


def get(name: str) -> Task:
    """The task of `data.source` `name`."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(
            f"config: data.source={name!r} is not one of {list(registered())}"
        ) from None


def check_reward(
    source: str, reward: str, rewards: Sequence[str], key: str = "reward.name"
) -> None:
    """Refuses a reward that judges only another task's examples; `rewards` are the
    registered reward names offered instead, `key` the config key named."""
    for other in _TASKS.values():
        if other.name != source and reward in other.own_rewards:
            mine = get(source).own_rewards
            offer = sorted(set(rewards) - set(other.own_rewards) | set(mine))
            raise ConfigError(
                f"config: {key}={reward!r} judges only {other.description}, "
                f"but data.source={source!r}; set --config.{key} to one of {offer}"
            )
