"""How vLLM's sampler blocks a family's audio special tokens: one answer for the rollout engines and the served
policy (:meth:`polyaudio_rl.core.models.ModelFamily.vllm_token_block`).

A token whose text vLLM's tokenizer encodes to that id alone is a single-token ``bad_words`` entry (its logit is -inf
at every step, greedy included). A token no text encodes to (Voxtral's ``[AUDIO]`` under the Mistral tokenizer) cannot
be a bad word, and ``logit_bias`` stops at -100, which a large enough logit beats: then the request samples from
``allowed_token_ids``, every other id of the model's vocabulary (an exact -inf mask). Both are vLLM sampling
parameters, and both are fields of vLLM's OpenAI chat request, so a served request carries them too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class TokenBlock:
    """vLLM sampling parameters that keep ``blocked`` ids out of every sampled token."""

    blocked: tuple[int, ...]
    """The ids never to be sampled."""
    bad_words: tuple[str, ...]
    """Single-token words blocking those ids that text can name (vLLM ``bad_words``)."""
    allowed_token_ids: tuple[int, ...] | None
    """Every id of the vocabulary but the blocked ones, when some blocked id cannot be a bad word; else None."""

    def request_params(self, bad_words: Sequence[str] | None = None,
                       allowed_token_ids: Sequence[int] | None = None) -> tuple[list[str], list[int] | None]:
        """A request's own ``bad_words`` / ``allowed_token_ids`` with this block on top (the block wins): the words
        joined; the client's allowed ids less the blocked ones, or this block's list when the client gave none.
        An allowed list that the block leaves empty is a ValueError naming the field."""
        words = list(dict.fromkeys([*(bad_words or []), *self.bad_words]))
        if allowed_token_ids is None:
            return words, list(self.allowed_token_ids) if self.allowed_token_ids is not None else None
        blocked = set(self.blocked)
        allowed = [int(i) for i in allowed_token_ids if int(i) not in blocked]
        if not allowed:
            raise ValueError(f"allowed_token_ids: every id given is one of the model's audio tokens {sorted(blocked)}, "
                             "which a completion never contains")
        return words, allowed


def vllm_suppression(tokenizer: Any, ids: Sequence[int]) -> tuple[list[str], dict[int, float]]:
    """How vLLM's sampler blocks ``ids``: as ``bad_words`` (vLLM tokenises each word; one that is exactly one token
    gets a -inf logit at every step) when the token's text encodes to that id alone, else (a token the tokenizer
    cannot produce from text) with vLLM's strongest ``logit_bias``, -100 — which :func:`vllm_block` turns into an
    ``allowed_token_ids`` list."""
    from . import all_special_tokens

    words, bias = [], {}
    for i in ids:
        text = tokenizer.convert_ids_to_tokens([int(i)])[0]  # a list: vLLM's Mistral tokenizer takes lists only
        if text in all_special_tokens() and list(tokenizer.encode(text, add_special_tokens=False)) == [int(i)]:
            words.append(text)
        else:
            bias[int(i)] = -100.0
    return words, bias


def vllm_block(tokenizer: Any, ids: Sequence[int], vocab_size: int) -> TokenBlock:
    """The block of ``ids`` for vLLM's ``tokenizer`` and a model of ``vocab_size`` logits."""
    words, bias = vllm_suppression(tokenizer, ids)
    allowed = tuple(i for i in range(int(vocab_size)) if i not in bias) if bias else None
    return TokenBlock(tuple(sorted(int(i) for i in ids)), tuple(words), allowed)


def checkpoint_block(path: str, ids: Sequence[int], engine_kwargs: dict[str, Any]) -> TokenBlock:
    """The block of ``ids`` for the checkpoint at ``path`` as a vLLM engine started with ``engine_kwargs`` sees it
    (its tokenizer and vocabulary size, read without loading weights): what a request to that engine must carry."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.tokenizers import cached_tokenizer_from_config

    from .vllm_plugin import register

    register()  # the family's architecture name must resolve
    config = EngineArgs(model=str(path), **engine_kwargs).create_model_config()
    return vllm_block(cached_tokenizer_from_config(config), ids, config.get_vocab_size())
