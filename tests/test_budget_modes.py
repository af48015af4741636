"""What happens at the thinking budget: "force_end" closes the thinking with a forced
`</think>` and the response follows; "truncate" ends the row there (no tag, no
response), on the sampler's own path, through a frozen responder, and in the reward."""

from __future__ import annotations

import re
import types

import jax
import numpy as np
import pytest

from start_jax import rl, sampling, segments, train
from start_jax.errors import ConfigError
from start_jax.train.trainer import Trainer
from tests.fixtures import scripted, segment_tokens, smoke_config

THINK, END, EOS, PAD = 3, 4, 1, 0
SPECIAL = sampling.SpecialTokens(think=THINK, end_think=END, eos=EOS, pad=PAD)
BUDGET = 4
Z = 9  # Filler after a row's script.


def _script(steps):
    rows = [
        [7, 8, 7, 8, 6, 6, EOS],  # Thinks past its budget of 4.
        [7, END, 6, EOS],  # Closes its thinking itself.
        [7, 8, EOS, 6, 6, EOS],  # eos in the thinking closes it.
    ]
    return np.asarray([(r + [Z] * steps)[:steps] for r in rows])


@pytest.mark.parametrize("mode", ["force_end", "truncate"])
def test_the_row_at_its_budget_by_mode_and_the_others_alike(tiny_model, mode):
    config, params = tiny_model
    cfg = sampling.SamplingConfig(
        temperature=1.0, think_budget=BUDGET, response_budget=3, think_budget_mode=mode
    )
    script = _script(sampling.num_decode_steps(cfg, True))
    rollout = jax.device_get(
        sampling.sample(
            config, params, [[5, 6]] * 3, cfg, 0, SPECIAL, logits_processor=scripted(script)
        )
    )
    forced = np.asarray(rollout.forced)
    if mode == "force_end":
        # The fifth thinking token (a scripted 6) is replaced by a forced </think>; the
        # response follows.
        assert segment_tokens(rollout, 0, segments.THINK) == [THINK, 7, 8, 7, 8, END]
        assert segment_tokens(rollout, 0, segments.RESPONSE) == [6, EOS]
        assert forced[0][np.asarray(rollout.tokens)[0] == END].all()
    else:
        # The row ends after its fourth thinking token: no tag, no response, nothing forced
        # but the opening tag.
        assert segment_tokens(rollout, 0, segments.THINK) == [THINK, 7, 8, 7, 8]
        assert segment_tokens(rollout, 0, segments.RESPONSE) == []
        assert END not in np.asarray(rollout.tokens)[0]
        assert forced[0].sum() == 1
    assert int(rollout.think_length[0]) == BUDGET and bool(rollout.think_truncated[0])
    np.testing.assert_array_equal(
        sampling.stopped_at_budget(rollout), [mode == "truncate", False, False]
    )
    # What each mask mode trains of the row at its budget: its four sampled thinking
    # tokens, and with force_end its two response tokens; never a tag.
    thinking, response = 4, 2 if mode == "force_end" else 0
    for train_segments, want in (
        ("think", thinking),
        ("response", response),
        ("joint", thinking + response),
    ):
        mask = np.asarray(rl.loss_mask(rollout.segment_ids, rollout.forced, train_segments))
        assert mask[0].sum() == want, train_segments
    # Rows that end their thinking before the budget are the same in both modes.
    assert segment_tokens(rollout, 1, segments.THINK) == [THINK, 7, END]
    assert segment_tokens(rollout, 1, segments.RESPONSE) == [6, EOS]
    assert segment_tokens(rollout, 2, segments.THINK) == [THINK, 7, 8, EOS, END]  # END forced.
    assert segment_tokens(rollout, 2, segments.RESPONSE) == [6, EOS]
    np.testing.assert_array_equal(rollout.think_truncated[1:], [False, True])


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_a_frozen_responder_answers_only_the_rows_that_closed_their_thinking(tiny_model):
    config, params = tiny_model
    cfg = sampling.SamplingConfig(
        temperature=1.0, think_budget=BUDGET, response_budget=3, think_budget_mode="truncate"
    )
    thinking_cfg = cfg.replace(response_budget=0)
    script = _script(sampling.num_decode_steps(thinking_cfg, True))
    rows = np.arange(3)
    thinking = sampling.sample(
        config,
        params,
        [[5, 6]] * 3,
        thinking_cfg,
        0,
        SPECIAL,
        row_ids=rows,
        width=24,
        logits_processor=scripted(script),
    )
    got = jax.device_get(
        sampling.respond(config, params, thinking, cfg, jax.random.key(3), SPECIAL, row_ids=rows)
    )
    assert segment_tokens(got, 0, segments.THINK) == [THINK, 7, 8, 7, 8]
    assert segment_tokens(got, 0, segments.RESPONSE) == []
    assert int(got.response_length[0]) == 0
    assert all(int(n) >= 1 for n in got.response_length[1:])
    np.testing.assert_array_equal(sampling.stopped_at_budget(got), [True, False, False])


def test_the_reward_of_a_row_stopped_at_its_budget_is_the_configured_one():
    """`Trainer.score`: the reward function's score, except for stopped rows."""
    rollout = types.SimpleNamespace(
        think_truncated=np.asarray([True, True, False]),
        response_length=np.asarray([0, 2, 3]),
    )
    scored = np.asarray([0.5, 0.25, 1.0], np.float32)
    for mode, want in (("force_end", [0.5, 0.25, 1.0]), ("truncate", [-1.0, 0.25, 1.0])):
        fake = types.SimpleNamespace(
            spec=types.SimpleNamespace(
                sampling=sampling.SamplingConfig(think_budget_mode=mode), truncated_reward=-1.0
            ),
            tokenizer=None,
            reward_fn=None,
        )
        fake.judge = lambda *args: scored  # The reward function's own scores.
        got = Trainer.score(fake, rollout, [{"reference": "", "metadata": {}}] * 3, 1)
        np.testing.assert_array_equal(got, want)


def test_the_run_reads_the_mode_and_refuses_bad_values():
    c = smoke_config()
    c.sampling.think_budget_mode, c.sampling.truncated_reward = "truncate", -0.5
    spec = train.RunSpec.from_config(c)
    assert spec.sampling.think_budget_mode == "truncate" and spec.truncated_reward == -0.5
    c.sampling.think_budget_mode = "cut"
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "config: sampling.think_budget_mode='cut' is not one of ['force_end', 'truncate']"
        ),
    ):
        train.RunSpec.from_config(c)
    c = smoke_config()
    c.sampling.truncated_reward = float("nan")
    with pytest.raises(ConfigError, match=re.escape("config: sampling.truncated_reward=nan")):
        train.RunSpec.from_config(c)
