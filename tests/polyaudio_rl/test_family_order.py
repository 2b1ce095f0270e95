"""data_stream.epoch_order keeps a paraphrase family's rows next to each other; rows without a family keep the order
they had (the demo's data has none)."""
from __future__ import annotations

from polyaudio_rl.data_stream import _family, epoch_order, order_key


def test_family_rows_are_adjacent_and_plain_rows_keep_their_order():
    ids = [f"r{i}" for i in range(12)]
    fams = [f"f{i % 6}" for i in range(12)]  # 6 families of 2: r0/r6, r1/r7, ...
    for epoch in range(3):
        order = epoch_order(ids, ["t"] * 12, seed=1, epoch=epoch, families=fams)
        assert sorted(order) == sorted(ids)
        for a, b in zip(order[::2], order[1::2]):
            assert fams[ids.index(a)] == fams[ids.index(b)] and a < b
    plain = epoch_order(ids, ["t"] * 12, seed=1, epoch=0)
    assert plain == sorted(ids, key=lambda i: order_key(1, 0, i))
    assert epoch_order(ids, ["t"] * 12, 1, 0, families=[None] * 12) == plain


def test_family_is_read_from_metadata():
    assert _family('{"family": "bench-x-family-000001", "paraphrase": 1}') == "bench-x-family-000001"
    assert _family('{"variant": "beeps"}') is None and _family("not json") is None and _family(None) is None
