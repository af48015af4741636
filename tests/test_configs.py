"""Every config under experiments/configs builds a run spec (the fields exist and validate)."""

import glob
import importlib.util
import os

import pytest

from start_jax import rewards
from start_jax.errors import ConfigError
from start_jax.tokenizer import CharTokenizer
from start_jax.train.config import default_config
from start_jax.train.init_policy import model_config_of
from start_jax.train.spec import RunSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_a_run_spec(path):
    spec_ = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    assert module.__doc__ and "python launch.py" in module.__doc__  # The command to run it.
    spec = RunSpec.from_config(module.get_config())
    assert spec.total_steps > 0


def test_real_run_configs_render_chat_prompts_and_sample_in_bf16():
    for name, reward in (("qwen3_gsm8k", "math"), ("qwen3_open_qa", "judge")):
        path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
        spec_ = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)
        spec = RunSpec.from_config(module.get_config())
        assert spec.prompt.chat_template and dict(spec.prompt.template_kwargs) == {
            "enable_thinking": True
        }
        assert spec.reward_name == reward and spec.sampling_dtype == "bfloat16"
        assert spec.train.loss.tis_cap > 0 and module.get_config().tokenizer == ""
        assert [s.train_segments for s in spec.stages] == ["think", "response"]
        assert "Memory per device" in module.__doc__


def test_greedy_rollouts_are_trained_at_temperature_one():
    """The sampler reports greedy rollouts' log-probabilities at T = 1; the update must
    read them at T = 1 too (not at a tiny T that sharpens every distribution)."""
    c = default_config()
    c.sampling.temperature = 0.0
    assert RunSpec.from_config(c).train.loss.temperature == 1.0
    c.sampling.temperature = 0.7
    assert RunSpec.from_config(c).train.loss.temperature == 0.7


def test_reward_kwargs_errors_name_the_config_field():
    with pytest.raises(ConfigError, match=r"reward 'judge' needs reward.kwargs.checkpoint"):
        rewards.make("judge")
    with pytest.raises(
        ConfigError,
        match=r"reward 'math' takes no reward.kwargs.tolerance "
        r"\(it takes \['float_rounding', 'timeout_seconds'\]\)",
    ):
        rewards.make("math", tolerance=1e-6)
    with pytest.raises(ConfigError, match=r"unknown reward 'nope'; registered: \["):
        rewards.make("nope")


def test_attention_settings_reach_the_model_config():
    c = default_config()
    c.model.attention_impl = "blockwise"
    c.model.attention_block = 32
    c.model.remat = True
    model = model_config_of(RunSpec.from_config(c), CharTokenizer())
    assert (
        model.attention_impl,
        model.attention_block_q,
        model.attention_block_k,
        model.remat,
    ) == ("blockwise", 32, 32, True)
    c.model.attention_impl = "flash"
    with pytest.raises(ConfigError, match=r"model.attention_impl='flash' is not one of"):
        RunSpec.from_config(c)
