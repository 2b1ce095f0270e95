"""The answer region of the tag convention (rewards.extract.extract_answer), on hand-written completions."""
import pytest

from rewards.extract import extract_answer, tag_answers


@pytest.mark.parametrize("text,answer,source,n_tags", [
    ("<answer>Clip 2.</answer>", "Clip 2.", "tag", 1),
    ("<answer>C</answer> wait, <answer>B</answer>", "B", "tag", 2),           # the last closed answer
    ("<answer>Clip 3.</answer>Clip 3.</answer>Clip 3.", "Clip 3.", "tag", 1),  # run-on after the closing tag
    # an opening tag ends the answer before it: two answers, not one naming clips 1 and 2
    ("<answer>Clip 1.<answer>Clip 2.</answer>", "Clip 2.", "tag", 1),
    ("<answer>Clip 2.</answer> then <answer>Clip 3.", "Clip 2.", "tag", 1),   # a closed answer beats an open one
    ("<answer>Clips 1 and 2.<answer>", "Clips 1 and 2.", "open_tag", 0),     # the closing tag written as an opening one
    ("<answer>Clip 2.<answer>Clip 3.<answer>", "Clip 3.", "open_tag", 0),    # the last non-empty answer
    ("<answer>Clip 1.<answer>Clip 3.<answer>Cl", "Clip 3.", "open_tag", 0),  # not the text cut off at the limit
    ("<answer>Clip 1 and", "Clip 1 and", "open_tag", 0),                     # only that text: it is the answer
    ("<ANSWER>Clip 2.</Answer>", "Clip 2.", "tag", 1),                        # tags in any case
    ("<answer>", "", "open_tag", 0),
    ("<answer></answer>", "", "tag", 1),
    ("Clip 2.</answer>", "Clip 2.</answer>", "final_statement", 0),          # no opening tag: the final statement
    ("I think so.\n\nThe answer is Clip 4.", "Clip 4.", "final_statement", 0),
])
def test_extract_answer_table(text, answer, source, n_tags):
    e = extract_answer(text)
    assert (e.text, e.source, e.n_tags) == (answer, source, n_tags)


def test_tag_answers():
    assert tag_answers("no tags") is None
    assert tag_answers("x <answer>a</answer> y <answer>b") == [("a", "close"), ("b", "end")]
    assert tag_answers("<answer>a<answer>b</answer></answer>") == [("a", "open"), ("b", "close")]
