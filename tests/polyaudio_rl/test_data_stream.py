"""Ray Data prompt stream: deterministic seeded order, exact resume, bad rows skipped and counted."""
import pytest
import ray

from polyaudio_rl.core.schema import write_shard
from polyaudio_rl.core.config import DataConfig
from polyaudio_rl.data_stream import PromptStream


@pytest.fixture(scope="module")
def ray_local():
    if ray.is_initialized():  # a Ray left in this process by an earlier test module
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory, sample_factory):
    d = tmp_path_factory.mktemp("pref")
    good = [sample_factory(f"s{i}", (0.5, 0.3 + 0.1 * i)) for i in range(7)]
    bad = sample_factory("bad-long", (0.5, 31.0))
    write_shard(str(d / "a.parquet"), good[:4] + [bad])
    write_shard(str(d / "b.parquet"), good[4:])
    return str(d)


def test_order_is_seeded_resumable_and_bad_rows_are_counted(ray_local, split_dir, tiny_ckpt):
    cfg = DataConfig()
    stream = PromptStream(split_dir, tiny_ckpt, cfg, seed=3)
    first_items = stream.take(5)
    first = [it.sample.id for it in first_items]
    rest = [it.sample.id for it in stream.take(4)]  # crosses into epoch 1
    epoch0 = first + rest[: 7 - len(first)]
    assert sorted(epoch0) == [f"s{i}" for i in range(7)]  # every good row once per epoch
    assert [b[0] for b in stream.bad] == ["bad-long"] and "over the 30 s limit" in stream.bad[0][1]
    # a new stream at the same seed and position continues exactly
    pos_after_first = stream.num_rows  # one full epoch consumed before `rest[2:]`
    again = PromptStream(split_dir, tiny_ckpt, cfg, seed=3, position=pos_after_first)
    assert [it.sample.id for it in again.take(2)] == rest[2:4]
    # resuming mid-epoch (the consumed rows are dropped before decoding) continues exactly too
    mid = PromptStream(split_dir, tiny_ckpt, cfg, seed=3, position=first_items[2].position)
    assert [it.sample.id for it in mid.take(3)] == first[2:5]
    # the order is epoch_order's for this seed (bad rows skipped), and another seed gives another order
    from polyaudio_rl.data_stream import epoch_order

    assert [i for i in epoch_order(stream._ids, stream._tasks, 3, 0) if i != "bad-long"] == epoch0
    assert epoch_order(stream._ids, stream._tasks, 4, 0) != epoch_order(stream._ids, stream._tasks, 3, 0)
    for st in (stream, again, mid):
        st.close()


def test_later_epochs_replay_the_decoded_rows_and_give_what_a_new_pipeline_gives(ray_local, split_dir, tiny_ckpt):
    def run(replay_mb: int, position: int = 0, n: int = 19, prefetch: int = 0):
        # prefetch 0: the stream reads no further than asked, so its epoch counters are exact when we look
        st = PromptStream(split_dir, tiny_ckpt, DataConfig(replay_cache_mb=replay_mb, prefetch_items=prefetch),
                          seed=5, position=position)
        got = [(it.position, it.sample.id, it.prompt.text, [a.tobytes() for a in it.prompt.audios])
               for it in st.take(n)]
        out = got, list(st.bad), st.streamed_epochs, st.replayed_epochs
        st.close()
        return out

    streamed, bad_s, n_streamed, n_replayed = run(0)  # 19 good rows = epochs 0, 1 and the start of 2
    assert (n_streamed, n_replayed) == (3, 0)
    replayed, bad_r, n_streamed, n_replayed = run(1024)
    assert (n_streamed, n_replayed) == (1, 2)  # one pipeline, then the decoded rows in each epoch's own order
    assert replayed == streamed and bad_r == bad_s and len(bad_r) >= 2  # the bad row once per epoch passed
    assert [sid for _, sid, *_ in replayed[:7]] != [sid for _, sid, *_ in replayed[7:14]]  # each epoch its order
    assert run(1024, prefetch=64)[0] == streamed  # the same with the prefetch thread running ahead
    # resumed mid-epoch: the partial epoch streams, the next one too (rows were skipped), then replay
    resumed, _, n_streamed, n_replayed = run(1024, position=streamed[3][0], n=16)
    assert resumed == streamed[3:] and (n_streamed, n_replayed) == (2, 1)
    # a budget the split does not fit (~1 byte, under one row's decoded size): every epoch streams
    tiny_budget = PromptStream(split_dir, tiny_ckpt, DataConfig(replay_cache_mb=1, prefetch_items=0), seed=5)
    tiny_budget.cfg.replay_cache_mb = 1e-6
    assert [it.sample.id for it in tiny_budget.take(9)] == [sid for _, sid, *_ in streamed[:9]]
    assert (tiny_budget.streamed_epochs, tiny_budget.replayed_epochs) == (2, 0)
    tiny_budget.close()


def test_items_carry_prompt_and_audio_free_sample(ray_local, split_dir, tiny_ckpt):
    stream = PromptStream(split_dir, tiny_ckpt, DataConfig(), seed=0)
    item = stream.take(1)[0]
    assert item.prompt.text.count("<|AUDIO|>") == 2
    assert [len(a) for a in item.prompt.audios][0] == 8000
    assert all(c.audio == b"" for c in item.sample.clips) and item.sample.key["type"] == "clip"
    stream.close()


def test_repeated_sample_ids_in_a_split_are_an_error_naming_them(ray_local, tmp_path, sample_factory, tiny_ckpt):
    write_shard(str(tmp_path / "a.parquet"), [sample_factory("twice", (0.5, 0.4)), sample_factory("once", (0.5, 0.6))])
    write_shard(str(tmp_path / "b.parquet"), [sample_factory("twice", (0.5, 0.7))])
    with pytest.raises(ValueError, match=r"unique within a split; repeated: \['twice'\]"):
        PromptStream(str(tmp_path), tiny_ckpt, DataConfig(), seed=0)


def test_an_unreadable_shard_is_an_error_naming_it(tmp_path, sample_factory, tiny_ckpt):
    write_shard(str(tmp_path / "a.parquet"), [sample_factory("fine", (0.5, 0.4))])
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"b\.parquet: cannot read the shard's id/task/answer/metadata columns"):
        PromptStream(str(tmp_path), tiny_ckpt, DataConfig(), seed=0)


@pytest.mark.parametrize("rows,per,cuts", [(8, 3, [3, 6]), (9, 3, [3, 6]), (10, 3, [3, 6, 9]), (3, 3, [3]),
                                            (1, 64, [1]), (64, 64, [64]), (65, 64, [64]), (200, 64, [64, 128, 192])])
def test_sort_cuts_give_a_partition_every_n_rows(rows, per, cuts):
    from polyaudio_rl.data_stream import sort_cuts

    assert sort_cuts(rows, per) == cuts


def test_an_epoch_sorted_over_several_partitions_keeps_the_seeded_order(ray_local, split_dir, tiny_ckpt, monkeypatch):
    """The epoch's sort cuts the known order into partitions of SORT_PARTITION_ROWS rows (explicit boundaries, no
    sampling pass); at 3 rows the 8-row split spans three partitions and must still stream in the seeded order
    (the stream checks every row against it and raises StreamOrderError otherwise)."""
    from polyaudio_rl import data_stream
    from polyaudio_rl.data_stream import epoch_order

    monkeypatch.setattr(data_stream, "SORT_PARTITION_ROWS", 3)
    stream = PromptStream(split_dir, tiny_ckpt, DataConfig(prefetch_items=0), seed=3)
    got = [it.sample.id for it in stream.take(7)]
    stream.close()
    assert got == [i for i in epoch_order(stream._ids, stream._tasks, 3, 0) if i != "bad-long"]


def test_epoch_order_interleaves_tasks_when_asked():
    from polyaudio_rl.data_stream import epoch_order, order_key

    ids = [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(2)] + [f"c{i}" for i in range(3)]
    tasks = [i[0] for i in ids]
    plain = epoch_order(ids, tasks, seed=1, epoch=0)
    assert plain == sorted(ids, key=lambda i: order_key(1, 0, i))  # the seeded shuffle, as before
    mixed = epoch_order(ids, tasks, seed=1, epoch=0, interleave=True)
    assert sorted(mixed) == sorted(ids)  # every row once
    # turns a, b, c (in a seeded task order) until b, then c run out; each task keeps its seeded order
    turn = sorted("abc", key=lambda t: order_key(1, 0, f"task:{t}"))
    assert [i[0] for i in mixed[:6]] == turn + turn
    assert [i[0] for i in mixed[6:]] == [t for t in turn if t != "b"] + ["a"]  # a: 2 left, c: 1 left
    for t in "abc":
        assert [i for i in mixed if i[0] == t] == [i for i in plain if i[0] == t]
    assert epoch_order(ids, tasks, seed=1, epoch=1, interleave=True) != mixed  # another epoch, another order


def test_epoch_order_balances_answers_within_each_task_when_asked():
    from polyaudio_rl.data_stream import epoch_order, order_key

    # task a: four "1" rows then two "2" rows (ids in that order); task b: three rows, one answer
    ids = ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1", "b2"]
    tasks = [i[0] for i in ids]
    answers = ["1", "1", "1", "1", "2", "2", "x", "x", "x"]
    ans = dict(zip(ids, answers))
    plain = epoch_order(ids, tasks, seed=3, epoch=0)
    order = epoch_order(ids, tasks, seed=3, epoch=0, interleave=True, answers=answers)
    assert sorted(order) == sorted(ids)  # every row once
    a_rows = [i for i in order if i[0] == "a"]
    # a's answers alternate while both last (in a seeded answer order), then the rest of "1"
    first = min("12", key=lambda x: order_key(3, 0, f"answer:a:{x}"))
    second = "2" if first == "1" else "1"
    assert [ans[i] for i in a_rows] == [first, second, first, second, "1", "1"]
    for x in "12":  # each answer's rows keep their seeded order
        assert [i for i in a_rows if ans[i] == x] == [i for i in plain if i[0] == "a" and ans[i] == x]
    assert [i for i in order if i[0] == "b"] == [i for i in plain if i[0] == "b"]  # one answer: as without balancing
    # the tasks still take turns
    turn = sorted("ab", key=lambda t: order_key(3, 0, f"task:{t}"))
    assert [i[0] for i in order[:6]] == turn * 3
    with pytest.raises(ValueError, match="interleave"):
        epoch_order(ids, tasks, seed=3, epoch=0, answers=answers)


@pytest.mark.parametrize("got, want, error", [
    (["a", "b", "c"], ["a", "b", "c"], None),                                                  # the seeded order
    ([], [], None),
    (["b", "a", "c"], ["a", "b", "c"], "row 0 of the epoch is 'b', the seeded order has 'a' there"),  # a block early
    (["a", "b"], ["a", "b", "c"], "ended after 2 rows, the seeded order has 3 \\('c' next\\)"),     # a row lost
    (["a", "b", "c", "d"], ["a", "b", "c"], "row 3 of the epoch is 'd', .* None there \\(only 3 rows\\)"),
])
def test_in_order_passes_the_seeded_order_and_stops_any_other(got, want, error):
    """What PromptStream checks every pipeline row against: a Ray Data pipeline that handed a later block on first
    (another run's order, a paraphrase family split over two batches) stops the run instead of training on it."""
    from polyaudio_rl.data_stream import StreamOrderError, in_order

    rows = ({"id": i, "n": k} for k, i in enumerate(got))
    if error is None:
        assert [r["n"] for r in in_order(rows, want)] == list(range(len(got)))
        return
    seen = []
    with pytest.raises(StreamOrderError, match=error):
        for r in in_order(rows, want):
            seen.append(r["id"])
    assert seen == got[: len(seen)] and seen == want[: len(seen)]  # every row before the fault was passed on
