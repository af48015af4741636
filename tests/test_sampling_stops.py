"""Several ids that end a row (Llama 3, Qwen3) and think tags banned in the response."""

from __future__ import annotations

import json

import numpy as np
import pytest

from start_jax import sampling, segments, tokenizer
from tests.bpe_fixtures import write_bpe_dir
from tests.fixtures import scripted, segment_tokens

THINK, END, EOS, PAD, STOP = 3, 4, 1, 0, 11  # STOP: a second end-of-turn id.
SPECIAL = sampling.SpecialTokens(think=THINK, end_think=END, eos=EOS, pad=PAD, stop=(STOP,))


def test_special_tokens_keep_stop_ids_sorted_and_without_eos():
    s = sampling.SpecialTokens(eos=5, pad=0, stop=(9, 5, 7, 9))
    assert s.stop == (7, 9) and s.eos_ids == (5, 7, 9)
    assert sampling.SpecialTokens(eos=5, pad=0).eos_ids == (5,)
    assert s == sampling.SpecialTokens(eos=5, pad=0, stop=[7, 9])  # Hashable, static.


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_a_stop_id_ends_the_response_and_closes_the_thinking_as_eos_does(tiny_model):
    config, params = tiny_model
    cfg = sampling.SamplingConfig(temperature=1.0, think_budget=5, response_budget=6)
    steps = sampling.num_decode_steps(cfg, True)
    z = 9
    script = np.asarray(
        [
            [7, END, 6, STOP] + [z] * (steps - 4),  # The response ends at the stop id.
            [7, STOP, 8] + [6, EOS] + [z] * (steps - 5),  # A stop id inside the thinking closes it.
            [7, END, 6, EOS] + [z] * (steps - 4),  # eos still ends a row.
        ]
    )
    rollout = sampling.sample(
        config, params, [[5, 6]] * 3, cfg, 0, SPECIAL, logits_processor=scripted(script)
    )
    assert segment_tokens(rollout, 0, segments.RESPONSE) == [6, STOP]
    assert segment_tokens(rollout, 0, segments.THINK) == [THINK, 7, END]
    # After the stop id in the thinking, </think> is forced in place of the scripted 8.
    assert segment_tokens(rollout, 1, segments.THINK) == [THINK, 7, STOP, END]
    assert segment_tokens(rollout, 1, segments.RESPONSE) == [6, EOS]
    assert segment_tokens(rollout, 2, segments.RESPONSE) == [6, EOS]
    np.testing.assert_array_equal(rollout.response_length, [2, 2, 2])
    np.testing.assert_array_equal(rollout.response_truncated, [False, False, False])
    np.testing.assert_array_equal(rollout.think_truncated, [False, True, False])
    # Without the stop id the first row runs to its response budget.
    plain = sampling.SpecialTokens(think=THINK, end_think=END, eos=EOS, pad=PAD)
    rollout = sampling.sample(
        config, params, [[5, 6]], cfg, 0, plain, logits_processor=scripted(script[:1])
    )
    assert len(segment_tokens(rollout, 0, segments.RESPONSE)) == cfg.response_budget
    assert bool(rollout.response_truncated[0])


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_generate_stops_at_any_of_several_eos_ids_and_min_length_blocks_them_all(tiny_model):
    config, params = tiny_model
    cfg = sampling.SamplingConfig(temperature=1.0, response_budget=6)
    script = np.asarray([[6, STOP, 7, 7, 7, 7], [6, 6, EOS, 7, 7, 7]])
    out = sampling.generate(
        config,
        params,
        [[5], [5, 6]],
        cfg,
        0,
        eos_id=[EOS, STOP],
        pad_id=PAD,
        logits_processor=scripted(script),
    )
    assert segment_tokens(out, 0, segments.RESPONSE) == [6, STOP]
    assert segment_tokens(out, 1, segments.RESPONSE) == [6, 6, EOS]
    # A minimum length bans every eos id until it is reached: the scripted
    # stop and eos become ordinary draws from the rest of the vocabulary.
    blocked = sampling.generate(
        config,
        params,
        [[5], [5, 6]],
        cfg.replace(min_response_tokens=3),
        0,
        eos_id=[EOS, STOP],
        pad_id=PAD,
        logits_processor=scripted(script),
    )
    for row in range(2):
        first = segment_tokens(blocked, row, segments.RESPONSE)[:3]
        assert EOS not in first and STOP not in first
    with pytest.raises(ValueError, match="eos_id=99 is outside the vocabulary"):
        sampling.generate(config, params, [[5]], cfg, 0, eos_id=[EOS, 99], pad_id=PAD)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_think_tags_are_banned_in_the_response(tiny_model):
    config, params = tiny_model
    assert sampling.SamplingConfig().ban_tags_in_response  # On by default.
    cfg = sampling.SamplingConfig(temperature=1.0, think_budget=3, response_budget=5)
    steps = sampling.num_decode_steps(cfg, True)
    # Row 0 asks for <think> everywhere, row 1 for </think>: both tags are
    # allowed inside the thinking (</think> closes it) and banned after it.
    script = np.asarray([[THINK] * steps, [7, END] + [END] * (steps - 2)])
    banned = sampling.sample(
        config, params, [[5, 6]] * 2, cfg, 0, SPECIAL, logits_processor=scripted(script)
    )
    assert segment_tokens(banned, 0, segments.THINK) == [THINK, THINK, THINK, THINK, END]
    assert segment_tokens(banned, 1, segments.THINK) == [THINK, 7, END]
    for row in range(2):
        response = segment_tokens(banned, row, segments.RESPONSE)
        assert response and not {THINK, END} & set(response)
    # Each drawn response token is a draw from the distribution without the
    # tags: the scripted row puts -40 on every other id, so after the ban the
    # draw is uniform over the rest: log p = -log(V - 2) under "sampled".
    sampled = sampling.sample(
        config,
        params,
        [[5, 6]] * 2,
        cfg.replace(logprobs_of="sampled"),
        0,
        SPECIAL,
        logits_processor=scripted(script),
    )
    lp, segs = np.asarray(sampled.logprobs), np.asarray(sampled.segment_ids)
    sampled_mask = np.asarray(sampled.sampled)
    response_lp = lp[(segs == segments.RESPONSE) & sampled_mask]
    np.testing.assert_allclose(response_lp, -np.log(config.vocab_size - 2), atol=1e-5)

    allowed = sampling.sample(
        config,
        params,
        [[5, 6]] * 2,
        cfg.replace(ban_tags_in_response=False),
        0,
        SPECIAL,
        logits_processor=scripted(script),
    )
    assert segment_tokens(allowed, 0, segments.RESPONSE) == [THINK] * cfg.response_budget
    assert segment_tokens(allowed, 1, segments.RESPONSE) == [END] * cfg.response_budget
    with pytest.raises(ValueError, match="ban_tags_in_response must be True or False"):
        sampling.SamplingConfig(ban_tags_in_response="yes")


def test_plain_generation_may_write_the_tag_ids(tiny_model):
    """Without think tags in `SpecialTokens` nothing is banned."""
    config, params = tiny_model
    cfg = sampling.SamplingConfig(temperature=1.0, response_budget=4)
    out = sampling.generate(
        config,
        params,
        [[5]],
        cfg,
        0,
        eos_id=EOS,
        pad_id=PAD,
        logits_processor=scripted(np.full((1, 4), THINK)),
    )
    assert segment_tokens(out, 0, segments.RESPONSE) == [THINK] * 4


def test_hf_tokenizer_reads_every_eos_id_and_writes_them_back(tmp_path):
    specials = ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>", "<think>", "</think>"]
    d = write_bpe_dir(
        tmp_path / "llama", specials, {"eos_token": "<|eot_id|>"}, model_config={"eos_token_id": 0}
    )
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 1, 2, 10**6]}))
    tok = tokenizer.HFTokenizer.from_pretrained(d)
    assert tok.eos_id == 2 and tok.stop_ids == (0, 1)  # Out-of-vocabulary ids are dropped.
    special = sampling.SpecialTokens.from_tokenizer(tok)
    assert special.eos_ids == (2, 0, 1)
    out = tok.save_pretrained(tmp_path / "export")
    again = tokenizer.HFTokenizer.from_pretrained(out)
    assert again.eos_id == 2 and again.stop_ids == (0, 1)
    # A tokenizer whose configs list one eos has no further stop ids.
    (d / "generation_config.json").unlink()
    (d / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert tokenizer.HFTokenizer.from_pretrained(d).stop_ids == ()
    assert tokenizer.CharTokenizer().stop_ids == ()
