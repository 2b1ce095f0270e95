"""Shared-prompt packing layout (polyaudio_rl/core/packing.py): hand-computed ids, positions, segments, gather
indices and block mask. The model-level equivalence (log-probs and gradients) is in test_grpo_loss.py."""
import torch

from polyaudio_rl.core.packing import PAD, PROMPT, pack

PAD_ID = 0


def _example():
    # prompts u0 = [1, 2, 3], u1 = [4, 5]; items: (u0, [10, 11]), (u1, [12]), (u0, [13, 14, 15]), a filler (u1, [16])
    return pack([torch.tensor([1, 2, 3]), torch.tensor([4, 5])], [0, 1, 0, 1], [[10, 11], [12], [13, 14, 15], [16]],
                [True, True, True, False], PAD_ID, special_ids=(14,))


def test_rows_positions_segments_and_gather_indices():
    pk = _example()
    assert pk.prompt_of_row == [0, 1] and pk.prompt_len == [3, 2]
    # row 0: prompt 0, then items 0 and 2; row 1: prompt 1, then items 1 and 3 (the filler is packed too)
    assert pk.true_ids[0].tolist() == [1, 2, 3, 10, 11, 13, 14, 15]
    assert pk.ids[0].tolist() == [1, 2, 3, 10, 11, 13, PAD_ID, 15]  # the special token 14 is fed as the pad id
    assert pk.ids[1].tolist() == [4, 5, 12, 16, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert pk.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]  # each completion continues from its prompt
    assert pk.position_ids[1].tolist()[:4] == [0, 1, 2, 2]
    assert pk.segments[0].tolist() == [PROMPT] * 3 + [1, 1, 2, 2, 2]
    assert pk.segments[1].tolist() == [PROMPT] * 2 + [1, 2] + [PAD] * 4
    # flat index (row * 8 + position) of the logits scoring each completion token, item by item:
    # item 0: token 10 from the prompt's last position (2), token 11 from 10 (3); item 1: 12 from row 1's
    # position 1 (9); item 2: 13 from the prompt's last position (2), 14 from 13 (5), 15 from 14 (6); filler: none
    assert pk.src.tolist() == [2, 3, 9, 2, 5, 6]


def test_block_mask_prompt_causal_completions_isolated_padding_self():
    pk = _example()
    m = pk.attention_mask(torch.float32, "cpu")
    assert m.shape == (2, 1, 8, 8)
    allowed = (m[:, 0] == 0).int()
    want0 = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],  # prompt: causal
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],  # completion 1: the prompt and itself
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 1, 0, 0],  # completion 2: the prompt and itself, never completion 1
        [1, 1, 1, 0, 0, 1, 1, 0],
        [1, 1, 1, 0, 0, 1, 1, 1],
    ])
    assert allowed[0].tolist() == want0.tolist()
    want1 = torch.zeros(8, 8, dtype=torch.int)
    want1[0, 0] = want1[1, :2] = 1
    want1[2, :3] = 1  # completion 1 (one token)
    want1[3, [0, 1, 3]] = 1  # completion 2: not completion 1
    for i in range(4, 8):
        want1[i, i] = 1  # padding attends to itself only
    assert allowed[1].tolist() == want1.tolist()
    assert float(m.min()) == torch.finfo(torch.float32).min  # additive: the dtype's minimum, never -inf


def test_no_special_tokens_no_true_ids():
    pk = pack([torch.tensor([1, 2])], [0, 0], [[7], [8, 9]], [True, True], PAD_ID, special_ids=(4,))
    assert pk.true_ids is None and pk.ids.tolist() == [[1, 2, 7, 8, 9]]
    assert pk.src.tolist() == [1, 1, 3]
