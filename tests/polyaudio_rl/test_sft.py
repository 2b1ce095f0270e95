"""SFT pieces that need no workers: answer targets and the resumable data order."""
import pytest

from polyaudio_rl.core.checkpoint import CheckpointError, read_state
from polyaudio_rl.sft import batches, sft_target_ids


class _S:
    def __init__(self, answer, sid="s-1"):
        self.answer, self.id = answer, sid


def test_answer_targets_end_with_im_end(tiny_processor):
    ids = sft_target_ids(_S("Audio 2 is louder."), tiny_processor)
    tok = tiny_processor.tokenizer
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(ids[:-1]) == "Audio 2 is louder."
    tagged = sft_target_ids(_S("B"), tiny_processor, answer_tag=True)
    assert tok.decode(tagged[:-1]) == "<answer>B</answer>"
    with pytest.raises(ValueError, match="sample s-9: empty answer"):
        sft_target_ids(_S("  ", "s-9"), tiny_processor)


def test_data_order_resumes_exactly():
    full = list(batches(10, 3, seed=7, start_epoch=0, start_index=0, epochs=2))
    assert [len(c) for _, _, c in full] == [3, 3, 3, 1, 3, 3, 3, 1]
    assert sorted(i for _, _, c in full[:4] for i in c) == list(range(10))  # each epoch covers every sample once
    assert [c for _, _, c in full[:4]] != [c for _, _, c in full[4:]]  # a fresh order per epoch
    epoch, index, _ = full[2]  # a checkpoint written after the third batch stores (epoch, index)
    resumed = list(batches(10, 3, seed=7, start_epoch=epoch, start_index=index, epochs=2))
    assert resumed == full[3:]


def test_incomplete_checkpoint_is_named(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(CheckpointError, match=r"ck: not a complete learner checkpoint"):
        read_state(tmp_path / "ck")
