"""A stage of the schedule: its knobs, declared once.

Every per-stage knob is one field of `StageSpec`, declared with `knob(...)`: its default,
its one-line documentation, its check, and (for knobs that fall back to a run-wide
setting) the config key it inherits from when left at its `unset` value. From those
declarations come the config section (`stage()`), the key and value checks of
`validate_stage`, and the frozen `StageSpec` of a run (`StageSpec.from_section`). A new
per-stage knob is therefore one field here, plus the code that reads it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections

from start_jax.errors import ConfigError
from start_jax.rl import TrainConfig, masks

RESPONDERS = ("self", "frozen")
THINKERS = ("self", "frozen")
KL_REFERENCES = ("init", "stage_start")


def knob(
    default: Any,
    doc: str,
    *,
    choices: tuple | None = None,
    check: Callable[[Any], bool] | None = None,
    rule: str = "",
    inherit: str = "",
    unset: Any = None,
):
    """A per-stage config knob: a `StageSpec` field with its default and documentation.

    `choices` or `check` (a predicate, with `rule` saying what it accepts) validate the
    config value. With `inherit` (a dotted config key), the value `unset` means "the
    run-wide setting" and is replaced by that key's value in the spec.
    """
    return dataclasses.field(
        default=default,
        metadata=dict(
            doc=doc, choices=choices, check=check, rule=rule, inherit=inherit, unset=unset
        ),
    )


def _int(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage of a run, frozen. `name` and `start` come from the schedule; every other
    field is a knob of `stages.<name>` in the config."""

    name: str
    train_segments: str = knob(
        "joint",
        "joint | think | response: the segment that carries gradient.",
        choices=tuple(sorted(masks.TRAIN_SEGMENTS)),
    )
    responder: str = knob(
        "self",
        "self | frozen: who writes the response (frozen = the initial policy).",
        choices=RESPONDERS,
    )
    steps: int = knob(10, "RL steps in this stage.", check=_int(0), rule="an integer >= 0")
    learning_rate: float = knob(
        1e-3,
        "Peak learning rate of the stage.",
        check=lambda v: _number(v) and v > 0,
        rule="a finite number > 0",
    )
    start: int = 0  # Global step at which the stage begins (from the schedule).
    thinker: str = knob(
        "self",
        "self | frozen: who writes the thinking (frozen = a snapshot of the policy at the "
        "stage's start; needs train_segments=response and responder=self).",
        choices=THINKERS,
    )
    kl_coef: float = knob(
        -1.0,
        "KL to the reference in this stage; -1 = algo.kl_coef.",
        check=lambda v: _number(v) and (v == -1 or v >= 0),
        rule="-1 (algo.kl_coef) or a finite number >= 0",
        inherit="algo.kl_coef",
        unset=-1,
    )
    kl_reference: str = knob(
        "init",
        "init | stage_start: the reference policy (the initial policy, or a snapshot at "
        "the stage's start).",
        choices=KL_REFERENCES,
    )
    kl_scope: str = knob(
        "",
        "'' = algo.kl_scope | mask | completion | think | response: the tokens that carry the KL.",
        choices=("",) + masks.KL_SCOPES,
        inherit="algo.kl_scope",
        unset="",
    )
    warmup_steps: int = knob(
        -1,
        "Linear warmup of this stage (optimizer updates); -1 = optim.warmup_steps.",
        check=_int(-1),
        rule="-1 (optim.warmup_steps) or an integer >= 0",
        inherit="optim.warmup_steps",
        unset=-1,
    )
    carry_optimizer: bool = knob(
        False,
        "Continue the previous stage's optimizer state (moments) instead of a fresh one.",
        check=lambda v: isinstance(v, bool),
        rule="True or False",
    )
    dynamic_rounds: int = knob(
        -1,
        "Dynamic sampling: at most this many further rollout rounds replace groups whose "
        "rewards on the trained segment are all equal; 0 = off, -1 = sampling.dynamic_rounds.",
        check=_int(-1),
        rule="-1 (sampling.dynamic_rounds) or an integer >= 0",
        inherit="sampling.dynamic_rounds",
        unset=-1,
    )

    @property
    def end(self) -> int:
        return self.start + self.steps

    @property
    def needs_snapshot(self) -> bool:
        """The stage reads a copy of the policy taken at its start (a frozen thinker or a
        stage-start KL reference); checkpoints inside the stage carry it."""
        return self.thinker == "frozen" or (
            bool(self.kl_coef) and self.kl_reference == "stage_start"
        )

    def train_config(self, train: TrainConfig) -> TrainConfig:
        """The run's update settings with this stage's KL coefficient and scope."""
        return dataclasses.replace(
            train,
            loss=dataclasses.replace(train.loss, kl_coef=self.kl_coef, kl_scope=self.kl_scope),
        )

    @classmethod
    def from_section(cls, name: str, section, start: int, config) -> "StageSpec":
        """The spec of `stages.<name>` (validated), inherited knobs resolved from `config`."""
        values = {}
        for f in knobs():
            value = section.get(f.name, f.default)
            if f.metadata["inherit"] and value == f.metadata["unset"]:
                value = _lookup(config, f.metadata["inherit"])
            values[f.name] = type(f.default)(value)
        return cls(name=name, start=start, **values)


def knobs() -> tuple[dataclasses.Field, ...]:
    """The configurable fields of a stage, in declaration order."""
    return tuple(f for f in dataclasses.fields(StageSpec) if "doc" in f.metadata)


def stage(
    train_segments: str = "joint",
    responder: str = "self",
    steps: int = 10,
    learning_rate: float = 1e-3,
    **overrides,
) -> ml_collections.ConfigDict:
    """One stage of the schedule: every knob at its default, changed by the arguments."""
    names = [f.name for f in knobs()]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"stage() got unknown knobs {unknown}; knobs: {names}")
    values = {f.name: f.default for f in knobs()}
    values.update(
        train_segments=train_segments,
        responder=responder,
        steps=steps,
        learning_rate=learning_rate,
        **overrides,
    )
    return ml_collections.ConfigDict(values)


def describe() -> str:
    """The knobs of a stage, a line each (the training guide prints this)."""
    return "\n".join(f"{f.name} = {f.default!r}: {f.metadata['doc']}" for f in knobs())


def validate_stage(config, name: str, first: bool) -> None:
    """Checks `stages.<name>`: each knob's value, then the combinations; errors name the key."""
    st = config.stages[name]
    key = f"config: stages.{name}."
    for f in knobs():
        value, meta = st.get(f.name, f.default), f.metadata
        if meta["choices"] is not None and value not in meta["choices"]:
            raise ConfigError(f"{key}{f.name}={value!r} is not one of {list(meta['choices'])}")
        if meta["check"] is not None and not meta["check"](value):
            raise ConfigError(f"{key}{f.name}={value!r} must be {meta['rule']}")
    st = StageSpec.from_section(name, st, 0, config)
    if st.thinker == "frozen" and (st.train_segments != "response" or st.responder != "self"):
        raise ConfigError(
            f"{key}thinker='frozen' samples the thinking from a snapshot, so the stage can train "
            f"only the response: set stages.{name}.train_segments='response' and "
            f"stages.{name}.responder='self' (now {st.train_segments!r}, {st.responder!r})"
        )
    if st.kl_reference == "stage_start" and not st.kl_coef:
        raise ConfigError(
            f"{key}kl_reference='stage_start' needs a KL coefficient: set "
            f"stages.{name}.kl_coef (or algo.kl_coef) > 0"
        )
    if st.carry_optimizer and first:
        raise ConfigError(
            f"{key}carry_optimizer=True: the first stage has no previous "
            "optimizer state to carry; set it on a later stage"
        )
    if st.dynamic_rounds and config.algo.group_size < 2:
        raise ConfigError(
            f"{key}dynamic_rounds={st.dynamic_rounds} (or sampling.dynamic_rounds) needs "
            f"algo.group_size >= 2: a group of one rollout never has rewards that differ"
        )
    if config.sampling.think_budget == 0 and st.steps and st.train_segments == "think":
        raise ConfigError(
            f"{key}train_segments='think' with sampling.think_budget=0: "
            "the stage has no thinking tokens to train; raise sampling.think_budget"
        )


def _lookup(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value
