"""The generative judge reward: rubric rendering, the sampler, score parsing and mapping."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from start_jax import models, rewards, sampling, segments
from start_jax.checkpoints import save_pretrained
from start_jax.errors import ConfigError, MissingFile, UserError
from start_jax.rewards import judge as judge_lib
from start_jax.sampling import sampler as core
from start_jax.tokenizer import CharTokenizer

TOK = CharTokenizer()
CONFIG = models.tiny_config(TOK.vocab_size)
MAX_NEW = 12
BATCH = 4
DIGITS = r"(-?\d+(?:\.\d+)?)"


def _save(directory, params) -> str:
    save_pretrained(CONFIG, params, str(directory))
    TOK.save_pretrained(directory)
    return str(directory)


def _random_params(seed=0):
    """Normal(0, 0.2) weights and unit norm scales, without compiling an initialiser."""
    rs = np.random.RandomState(seed)

    def fill(path, x):
        if "norm" in jax.tree_util.keystr(path):
            return np.ones(x.shape, np.float32)
        return rs.normal(0.0, 0.2, x.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, models.param_shapes(CONFIG))


def _bigram_params(successors: dict[str, str]):
    """A judge whose next token depends on the current token only: `successors[ch]`.

    Attention and MLP write nothing (zero o_proj and down_proj), so the final
    hidden state is the normalised embedding of the current token; each token of
    the table gets its own embedding dimension, read by the head's column of its
    successor ("<eos>" ends the output). Greedy decoding then spells a fixed
    text after a given last prompt token.
    """
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            np.ones(x.shape, np.float32)
            if "norm" in jax.tree_util.keystr(path)
            else np.zeros(x.shape, np.float32)
        ),
        models.param_shapes(CONFIG),
    )
    tokens = sorted(set(successors))
    assert len(tokens) <= CONFIG.hidden_size
    for dim, ch in enumerate(tokens):
        (src,) = TOK.encode(ch)
        (dst,) = TOK.encode(successors[ch])
        params["embed"]["embedding"][src, dim] = 1.0
        params["lm_head"][dim, dst] = 10.0
    return params


# The chat prompt ends with "assistant: "; the judge then writes "Score:7.5".
SCORE_CHAIN = {
    " ": "S",
    "S": "c",
    "c": "o",
    "o": "r",
    "r": "e",
    "e": ":",
    ":": "7",
    "7": ".",
    ".": "5",
    "5": "<eos>",
}
# A bare prompt ending with the response: its last letter picks the output.
PER_ROW = {
    "a": "3",
    "3": "<eos>",
    "b": "8",
    "8": "<eos>",
    "c": "1",
    "1": "2",
    "2": "<eos>",
    "d": "-",
    "-": "4",
    "4": "<eos>",
    "e": "x",
    "x": "<eos>",
}
PER_ROW_OUTPUT = {"a": "3", "b": "8", "c": "12", "d": "-4", "e": "x"}
PER_ROW_REWARD = {"a": 0.3, "b": 0.8, "c": 1.0, "d": 0.0, "e": 0.0}
BARE_RUBRIC = "Q: {question}\nRef: {reference}\nA: {response}"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return dict(
        random=_save(tmp_path_factory.mktemp("random"), _random_params()),
        score=_save(tmp_path_factory.mktemp("score"), _bigram_params(SCORE_CHAIN)),
        per_row=_save(tmp_path_factory.mktemp("per_row"), _bigram_params(PER_ROW)),
    )


def _input(prompt, response, reference=None, question=None):
    return rewards.RewardInput(
        prompt=prompt,
        response=response,
        prompt_ids=tuple(TOK.encode(prompt)),
        response_ids=tuple(TOK.encode(response)),
        reference=reference,
        metadata=None if question is None else {"question": question},
    )


ROWS = [
    _input("Prompt 1: what is 2+3?", "It is 5.", 5),
    _input(
        "<long chat prompt with SECRET header>", "Paris", "Paris", question="Capital of France?"
    ),
    _input("Name a colour.", "blue, surely", None),
]


def test_parse_score_table():
    table = [
        ("Score: 7", 7.0),
        ("Score: 3\nOn reflection... Score: 8", 8.0),  # The last match wins.
        ("Score:9", 9.0),
        ("Score:   7.5 out of 10", 7.5),
        ("Score: -2", -2.0),
        ("Score: 42", 42.0),  # Parsed; the mapping clips.
        ("I would give it a Score: 6. Score: ten", 6.0),  # "ten" is no match.
        ("no score here", None),
        ("score: 7", None),  # Case-sensitive.
        ("", None),
    ]
    for text, expected in table:
        assert judge_lib.parse_score(text, judge_lib.DEFAULT_SCORE_PATTERN) == expected, text
    assert judge_lib.parse_score("8/10, then 6/10", r"(\d+)/10") == 6.0
    assert judge_lib.parse_score("Grade: ten", r"Grade: (\w+)") is None  # Not a number.
    assert judge_lib.parse_score("Grade: nan", r"Grade: (\w+)") is None  # Not finite.
    for score, lo, hi, reward in [
        (7, 0, 10, 0.7),
        (0, 0, 10, 0.0),
        (10, 0, 10, 1.0),
        (12, 0, 10, 1.0),
        (-3, 0, 10, 0.0),
        (3, 1, 5, 0.5),
        (7.5, 0, 10, 0.75),
    ]:
        assert judge_lib.score_to_reward(score, lo, hi) == pytest.approx(reward)
    # Only the three placeholders are filled, once: other braces stay.
    assert (
        judge_lib.fill_rubric(
            r"\boxed{{x}} {question}|{response}|{reference} {other}",
            "q{reference}",
            "r{question}",
            "ref",
        )
        == r"\boxed{{x}} q{reference}|r{question}|ref {other}"
    )


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_judge_runs_through_the_sampler_and_unparsable_rows(dirs):
    fn = rewards.make(
        "judge",
        checkpoint=dirs["random"],
        on_unparsable="zero",
        max_new_tokens=MAX_NEW,
        batch_size=BATCH,
    )
    assert "judge" in rewards.registered() and fn.chat_template
    out = fn(ROWS)
    assert out.dtype == np.float32 and out.shape == (3,)
    # Each row's prompt is the filled default rubric as a user message; the
    # question comes from metadata when present, a missing reference is "(none)".
    expected_prompts = [
        TOK.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": (
                        judge_lib.fill_rubric(judge_lib.DEFAULT_RUBRIC, q, x.response, ref)
                    ),
                }
            ]
        )
        for x, q, ref in zip(
            ROWS,
            ["Prompt 1: what is 2+3?", "Capital of France?", "Name a colour."],
            ["5", "Paris", "(none)"],
        )
    ]
    assert fn.last_prompts == expected_prompts
    assert "SECRET" not in fn.last_prompts[1]
    # The outputs are what the sampler writes on those prompts, decoded.
    rollout = sampling.generate(
        fn.config,
        fn.params,
        [TOK.encode(p) for p in expected_prompts],
        sampling.SamplingConfig(temperature=0.0),
        0,
        eos_id=TOK.eos_id,
        pad_id=TOK.pad_id,
        max_new_tokens=MAX_NEW,
    )
    tokens, segs = np.asarray(rollout.tokens), np.asarray(rollout.segment_ids)
    direct = [
        TOK.decode(row[seg == segments.RESPONSE], skip_special_tokens=True)
        for row, seg in zip(tokens, segs)
    ]
    assert fn.last_outputs == direct and sum(map(len, direct)) > 0
    # A random judge writes no score: each row scores 0 and is counted.
    np.testing.assert_array_equal(out, 0.0)
    assert fn.unparsable_count == 3 and fn.total_unparsable == 3
    assert np.isnan(fn.last_scores).all()

    # The default is an error that names the pattern and quotes the output.
    strict = rewards.make(
        "judge", checkpoint=dirs["random"], max_new_tokens=MAX_NEW, batch_size=BATCH
    )
    with pytest.raises(judge_lib.JudgeError) as info:
        strict(ROWS)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert repr(judge_lib.DEFAULT_SCORE_PATTERN) in message
    assert f"row 0: no score in the judge's output {direct[0]!r}" in message
    assert "on_unparsable='zero'" in message and "rubric" in message
    assert strict.last_outputs == direct  # Kept for debugging after the error.
    long = strict._unparsable_error(4, "z" * 500)
    assert "'" + "z" * 200 + "...'" in str(long) and "z" * 201 not in str(long)


def test_parsed_score_flows_into_the_reward(dirs):
    """Chat template, default rubric and pattern: the judge writes "Score:7.5" -> 0.75."""
    fn = rewards.make("judge", checkpoint=dirs["score"], max_new_tokens=MAX_NEW, batch_size=BATCH)
    out = fn(ROWS)
    assert fn.last_prompts[0].endswith("assistant: ")
    assert fn.last_outputs == ["Score:7.5"] * 3
    np.testing.assert_array_equal(fn.last_scores, 7.5)
    np.testing.assert_allclose(out, 0.75, rtol=1e-6)
    assert fn.unparsable_count == 0 and fn.last_out_of_range == 0
    # Another range maps the same score elsewhere; out of range clips.
    np.testing.assert_allclose(
        rewards.make(
            "judge",
            checkpoint=dirs["score"],
            min_score=5,
            max_score=10,
            max_new_tokens=MAX_NEW,
            batch_size=BATCH,
        )(ROWS),
        0.5,
        rtol=1e-6,
    )
    low = rewards.make(
        "judge",
        checkpoint=dirs["score"],
        min_score=0,
        max_score=5,
        max_new_tokens=MAX_NEW,
        batch_size=BATCH,
    )
    np.testing.assert_array_equal(low(ROWS), 1.0)
    assert low.last_out_of_range == 3


def _per_row_inputs(letters):
    return [
        _input(f"question {i}", f"answer {i} ends in {ch}", reference=i)
        for i, ch in enumerate(letters)
    ]


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_batched_equals_one_at_a_time_and_does_not_recompile(dirs):
    fn = rewards.make(
        "judge",
        checkpoint=dirs["per_row"],
        chat_template=False,
        rubric=BARE_RUBRIC,
        score_pattern=DIGITS,
        on_unparsable="zero",
        max_new_tokens=MAX_NEW,
        batch_size=BATCH,
    )
    letters = "abcdeab"  # Two batches of 4: the second is padded.
    batched = fn(_per_row_inputs(letters))
    assert fn.last_outputs == [PER_ROW_OUTPUT[ch] for ch in letters]
    np.testing.assert_allclose(batched, [PER_ROW_REWARD[ch] for ch in letters], rtol=1e-6)
    np.testing.assert_array_equal(fn.last_scores[:4], [3, 8, 12, -4])
    assert np.isnan(fn.last_scores[4])
    assert fn.unparsable_count == 1 and fn.last_out_of_range == 2
    assert fn.last_prompts[0] == "Q: question 0\nRef: 0\nA: answer 0 ends in a"

    sizes = (core.prefill._cache_size(), core.decode._cache_size())
    single = np.concatenate([fn([x]) for x in _per_row_inputs(letters)])
    np.testing.assert_array_equal(single, batched)
    # Other rows and batch sizes of the same width bucket reuse the compiled sampler.
    other = [
        _input("a longer question?", "so it is b", None),
        _input("q", "c", 7, question="the real question"),
    ]
    np.testing.assert_allclose(fn(other), [0.8, 1.0], rtol=1e-6)
    assert fn.last_prompts[1] == "Q: the real question\nRef: 7\nA: c"
    assert (core.prefill._cache_size(), core.decode._cache_size()) == sizes
    # A prompt past LENGTH_MULTIPLE tokens is the next width bucket: one compile more.
    fn([_input("q" * judge_lib.LENGTH_MULTIPLE, "b")])
    assert core.prefill._cache_size() == sizes[0] + 1

    # The default on_unparsable raises on the row whose output has no number.
    strict = rewards.make(
        "judge",
        checkpoint=dirs["per_row"],
        chat_template=False,
        rubric=BARE_RUBRIC,
        score_pattern=DIGITS,
        max_new_tokens=MAX_NEW,
        batch_size=BATCH,
    )
    np.testing.assert_allclose(strict(_per_row_inputs("ab")), [0.3, 0.8], rtol=1e-6)
    with pytest.raises(
        judge_lib.JudgeError,
        match=re.escape(
            f"row 2: no score in the judge's output 'x': score_pattern {DIGITS!r} does not match"
        ),
    ):
        strict(_per_row_inputs("abe"))


def test_bad_options_are_clear_errors(dirs, tmp_path):
    base = dict(checkpoint=dirs["per_row"])
    cases = [
        (dict(score_pattern=r"Score: \d+"), "has 0 capturing groups; it needs exactly one"),
        (dict(score_pattern=r"(Score): (\d+)"), "has 2 capturing groups"),
        (dict(score_pattern="(unclosed"), "is not a regular expression"),
        (dict(rubric="Grade {question}"), r"a \{response\} placeholder"),
        (dict(min_score=10, max_score=10), "must be greater than min_score"),
        (dict(on_unparsable="skip"), "on_unparsable='skip' is not one of"),
        (dict(batch_size=0), "batch_size=0 must be an integer >= 1"),
        (dict(max_new_tokens=1.5), "max_new_tokens=1.5 must be an integer"),
        (dict(temperature=-1.0), "temperature=-1.0 must be a finite number >= 0"),
        (dict(template_kwargs="x"), "template_kwargs='x' must be a dict"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            rewards.make("judge", **base, **kwargs)
    with pytest.raises(MissingFile, match="judge: checkpoint directory .*nope"):
        rewards.make("judge", checkpoint=str(tmp_path / "nope"))
    # A tokenizer without a chat template: the rubric is the bare prompt by default.
    plain = tmp_path / "plain"
    save_pretrained(CONFIG, _bigram_params(PER_ROW), str(plain))
    TOK.to_hf_tokenizer_json(plain / "tokenizer.json")
    (plain / "tokenizer_config.json").write_text('{"eos_token": "<eos>", "pad_token": "<pad>"}')
    assert not rewards.make("judge", checkpoint=str(plain)).chat_template
    with pytest.raises(ConfigError, match="chat_template=True but the judge tokenizer has no"):
        rewards.make("judge", checkpoint=str(plain), chat_template=True)
