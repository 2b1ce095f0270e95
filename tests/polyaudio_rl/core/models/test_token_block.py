"""How vLLM blocks audio special tokens (table tests with a stand-in tokenizer): a token whose text encodes to its
id alone is a bad word; one that no text names (Voxtral's ``[AUDIO]`` under the Mistral tokenizer) is kept out by
``allowed_token_ids``, every other id; a request's own lists are merged with the block on top."""
from __future__ import annotations

import pytest

from polyaudio_rl.core.models.token_block import TokenBlock, vllm_block, vllm_suppression


class StandInTokenizer:
    """Ids 0..9; ``<|AUDIO|>`` (3) encodes to itself, ``[AUDIO]`` (4) encodes to bytes (as under a Mistral
    tokenizer), ``hello`` (5) is ordinary text."""

    vocab = {3: "<|AUDIO|>", 4: "[AUDIO]", 5: "hello"}

    def convert_ids_to_tokens(self, ids):
        return [self.vocab.get(i, f"t{i}") for i in ids]

    def encode(self, text, add_special_tokens=False):
        return {"<|AUDIO|>": [3], "[AUDIO]": [7, 8, 9], "hello": [5]}[text]


@pytest.mark.parametrize("ids, words, bias, allowed", [
    ([3], ["<|AUDIO|>"], {}, None),                                   # a bad word: no allowed list
    ([4], [], {4: -100.0}, (0, 1, 2, 3, 5, 6, 7, 8, 9)),              # text cannot name it: every other id
    ([3, 4], ["<|AUDIO|>"], {4: -100.0}, (0, 1, 2, 3, 5, 6, 7, 8, 9)),  # 3 is blocked by its bad word
    ([5], [], {5: -100.0}, (0, 1, 2, 3, 4, 6, 7, 8, 9)),              # not a special token: never a bad word
    ([], [], {}, None),
])
def test_block_of_ids(ids, words, bias, allowed):
    tok = StandInTokenizer()
    assert vllm_suppression(tok, ids) == (words, bias)
    block = vllm_block(tok, ids, 10)
    assert block == TokenBlock(tuple(sorted(ids)), tuple(words), allowed)


BLOCK = TokenBlock(blocked=(3, 4), bad_words=("<|AUDIO|>",), allowed_token_ids=(0, 1, 2, 3, 5))


@pytest.mark.parametrize("words, allowed, want", [
    (None, None, (["<|AUDIO|>"], [0, 1, 2, 3, 5])),                # the block's own lists
    (["foo", "<|AUDIO|>"], None, (["foo", "<|AUDIO|>"], [0, 1, 2, 3, 5])),  # words joined once
    (None, [1, 3, 4, 9], (["<|AUDIO|>"], [1, 9])),                 # the client's ids less the blocked ones
])
def test_request_params_put_the_block_on_top(words, allowed, want):
    assert BLOCK.request_params(words, allowed) == want


def test_request_params_without_an_allowed_list_keep_the_clients():
    words_only = TokenBlock(blocked=(3,), bad_words=("<|AUDIO|>",), allowed_token_ids=None)
    assert words_only.request_params(["x"], None) == (["x", "<|AUDIO|>"], None)
    assert words_only.request_params(None, [2, 3, 6]) == (["<|AUDIO|>"], [2, 6])


def test_an_allowed_list_of_blocked_ids_only_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match=r"allowed_token_ids: .*\[3, 4\]"):
        BLOCK.request_params(None, [3, 4])
