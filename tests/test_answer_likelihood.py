"""The answer-likelihood reward against transformers' teacher-forced log-probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from start_jax import rewards, rl, sampling
from start_jax.checkpoints import CheckpointError
from start_jax.errors import ConfigError, MissingFile
from start_jax.tokenizer import CharTokenizer
from tests import hf_fixtures

TOK = CharTokenizer()
# (prompt, thinking, reference): different lengths, an empty thinking.
ROWS = [
    ("a=3; b=a+2; b?", "a is 3 so b is 5", "5"),
    ("Bob likes tea. What does Bob like?", "", "tea"),
    ("x?", "no idea at all, guess", "Surely 42!"),
]


@pytest.fixture(scope="module")
def answerer(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("answerer"))
    hf = hf_fixtures.make_checkpoint(
        "qwen3",
        directory,
        vocab_size=TOK.vocab_size,
        pad_token_id=TOK.pad_id,
        eos_token_id=TOK.eos_id,
    )
    TOK.save_pretrained(directory)
    return directory, hf


def _inputs(rows=ROWS):
    return [
        rewards.ThinkingInput(
            prompt=p,
            response="",
            prompt_ids=tuple(TOK.encode(p)),
            response_ids=(),
            reference=r,
            thinking_ids=tuple(TOK.encode(t)),
            thinking=t,
        )
        for p, t, r in rows
    ]


def _torch_scores(hf, rows=ROWS, temperature=1.0):
    """Per-row (sum, count) of log p(reference <eos>) with a torch forward on the same ids."""
    out = []
    for p, t, r in rows:
        answer = TOK.encode(r) + [TOK.eos_id]
        ids = TOK.encode(p) + [TOK.think_id] + TOK.encode(t) + [TOK.end_think_id] + answer
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].double() / temperature
        logp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        out.append((logp[-len(answer) :].sum().item(), len(answer)))
    return np.asarray(out)


def test_matches_transformers_sum_and_mean(answerer):
    directory, hf = answerer
    ref = _torch_scores(hf)
    total = rewards.make("answer_likelihood", checkpoint=directory)(_inputs())
    assert total.dtype == np.float32 and total.shape == (len(ROWS),)
    np.testing.assert_allclose(total, ref[:, 0], rtol=0, atol=1e-4)
    mean = rewards.make("answer_likelihood", checkpoint=directory, reduce="mean")(_inputs())
    np.testing.assert_allclose(mean, ref[:, 0] / ref[:, 1], rtol=0, atol=1e-4)
    hot = rewards.make("answer_likelihood", checkpoint=directory, temperature=0.7)(_inputs())
    np.testing.assert_allclose(hot, _torch_scores(hf, temperature=0.7)[:, 0], rtol=0, atol=1e-4)


def test_batched_equals_one_at_a_time_and_compiles_per_bucket(answerer):
    directory, _ = answerer
    fn = rewards.make("answer_likelihood", checkpoint=directory, batch_size=2)
    batched = fn(_inputs())
    single = np.concatenate([fn(_inputs([row])) for row in ROWS])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)
    # Other rows of other lengths in the same (8, 48) bucket reuse the compiled program.
    size = rl.rollout_log_probs._cache_size()
    for rows in (
        [("q?", "hm, it is seven, or eight, or", "7"), ("what is it?", "it is", "x" * 25)],
        [("a=1; a?", "one, one, and one again", "1")],
    ):
        assert fn.arrays([fn.row(x) for x in _inputs(rows)])[0].shape == (8, 48)
        fn(_inputs(rows))
    assert rl.rollout_log_probs._cache_size() == size


def test_initial_policy_as_answerer(answerer):
    directory, _ = answerer
    from_dir = rewards.make("answer_likelihood", checkpoint=directory)
    given = rewards.make(
        "answer_likelihood", model_config=from_dir.config, params=from_dir.params, tokenizer=TOK
    )
    np.testing.assert_array_equal(given(_inputs()), from_dir(_inputs()))


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_score_reads_the_thinking_of_a_rollout(answerer):
    directory, _ = answerer
    fn = rewards.make("answer_likelihood", checkpoint=directory)
    special = sampling.SpecialTokens.from_tokenizer(TOK)
    prompts = [TOK.encode(p) for p, _, _ in ROWS]
    thinking = [TOK.encode(t) for _, t, _ in ROWS]
    rollout = sampling.sample(
        fn.config,
        fn.params,
        prompts,
        sampling.SamplingConfig(response_budget=4),
        0,
        special,
        thinking=thinking,
    )
    refs = [r for _, _, r in ROWS]
    np.testing.assert_allclose(
        rewards.score(rollout, TOK, fn, references=refs), fn(_inputs()), rtol=0, atol=1e-5
    )
    # A response-only reward still gets plain RewardInputs, without the thinking.
    seen = []

    def recorder(inputs):
        seen.extend(inputs)
        return np.zeros(len(inputs), np.float32)

    rewards.score(rollout, TOK, recorder, references=refs)
    assert all(type(x) is rewards.RewardInput for x in seen)
    with pytest.raises(ValueError, match="reads the thinking"):
        fn([rewards.RewardInput("q?", "a", (), (), "a")])


def test_bad_answerers_are_clear_errors(answerer, tmp_path):
    directory, _ = answerer
    missing = str(tmp_path / "nope")
    with pytest.raises(MissingFile, match="answer_likelihood: checkpoint directory .*nope"):
        rewards.make("answer_likelihood", checkpoint=missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="answer_likelihood: checkpoint .*empty.*config.json"):
        rewards.make("answer_likelihood", checkpoint=str(empty))
    with pytest.raises(ConfigError, match="reduce='max'"):
        rewards.make("answer_likelihood", checkpoint=directory, reduce="max")
    with pytest.raises(ConfigError, match="either checkpoint"):
        rewards.make("answer_likelihood")
    no_tok = str(tmp_path / "no_tok")
    hf_fixtures.make_checkpoint("qwen3", no_tok, vocab_size=TOK.vocab_size, num_hidden_layers=1)
    with pytest.raises(ConfigError, match="no tokenizer.json; pass tokenizer="):
        rewards.make("answer_likelihood", checkpoint=no_tok)
    assert (
        rewards.make("answer_likelihood", checkpoint=no_tok, tokenizer="char").tokenizer.eos_id
        == TOK.eos_id
    )
    score = str(tmp_path / "score")
    hf_fixtures.make_checkpoint(
        "qwen2_score", score, vocab_size=TOK.vocab_size, num_hidden_layers=1
    )
    with pytest.raises(ConfigError, match="no language-model head"):
        rewards.make("answer_likelihood", checkpoint=score, tokenizer="char")
