import pytest

from polyaudio_rl.core.atomic import atomic_dir


def test_complete_write_replaces_the_old_directory(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # readers still see the old one while the new one is written
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or old directory left


def test_failed_write_leaves_the_old_directory_and_no_temporary(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert (out / "old.txt").read_text() == "old"


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    from polyaudio_rl.core.atomic import atomic_write_text

    f = tmp_path / "run.json"
    f.write_text("old")
    assert atomic_write_text(f, "new\n") == f and f.read_text() == "new\n"
    assert oct(f.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    with pytest.raises(TypeError):
        atomic_write_text(f, None)  # a failed write: the old content stays, no temporary left
    assert f.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
