"""A reward's own model (a judge, an answerer): its checkpoint directory and tokenizer."""

from __future__ import annotations

import os
from typing import Any

from start_jax import checkpoints
from start_jax.errors import ConfigError, MissingFile, UserError
from start_jax.tokenizer import HFTokenizer
from start_jax.tokenizer import load_tokenizer as load_named


def load_model(what: str, path: str, dtype: str):
    """(model_config, params) of a Hugging Face directory; errors start with `what`."""
    if not os.path.isdir(path):
        raise MissingFile(f"{what}: checkpoint directory {path!r} not found")
    try:
        return checkpoints.load_pretrained(path, dtype=dtype)
    except UserError as e:
        raise type(e)(f"{what}: checkpoint {path!r}: {e}") from None


def load_tokenizer(what: str, checkpoint: str | None, tokenizer: Any):
    """`tokenizer` as given (a `Tokenizer`, or a name or directory), else the
    checkpoint's own tokenizer.json; a ConfigError starting with `what` if neither."""
    if tokenizer is None:
        if checkpoint is not None and os.path.isfile(os.path.join(checkpoint, "tokenizer.json")):
            return HFTokenizer.from_pretrained(checkpoint)
        where = (
            f"checkpoint {checkpoint!r} has no tokenizer.json"
            if checkpoint is not None
            else "model_config/params come without a tokenizer"
        )
        raise ConfigError(f"{what}: {where}; pass tokenizer=<name or directory>")
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_named(str(tokenizer))
    return tokenizer
