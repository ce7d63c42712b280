import pytest

from lmproject.atomic import atomic_dir, atomic_write, check_new_folder
from lmproject.errors import UserError


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as file:
        file.write("half of the new content")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(UserError, match="directory .* does not exist"), atomic_write(tmp_path / "a" / "b"):
        pass


def test_atomic_write_publishes_complete_file_with_usual_permissions(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target, "wb") as file:
        file.write(b"data")
        assert not target.exists()  # nothing under the final name until the block succeeds
    assert target.read_bytes() == b"data"
    assert target.stat().st_mode & 0o044  # readable by others (mkstemp alone would make it private)


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "runs" / "export"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as folder:
        (folder / "a.txt").write_text("written")
        raise KeyboardInterrupt
    assert list((tmp_path / "runs").iterdir()) == []  # no folder, no temporary sibling
    with atomic_dir(target) as folder:
        (folder / "a.txt").write_text("written")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "written" and target.stat().st_mode & 0o055
    with pytest.raises(UserError, match="already exists"), atomic_dir(target):
        pass
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as folder:  # an empty folder may be replaced
        (folder / "b.txt").write_text("b")
    assert (tmp_path / "empty/b.txt").exists()


def test_outputs_that_cannot_be_written_are_named_before_any_work(tmp_path):
    """A directory as an output file was an IsADirectoryError naming the temp file; a folder under a file
    was `[Errno 17] File exists` naming the file."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a directory, expected a file name"), atomic_write(tmp_path):
        pass
    with pytest.raises(UserError, match=f"{tmp_path / 'file'} is not a directory"):
        check_new_folder(tmp_path / "file/sub/out")
    with pytest.raises(UserError, match="is not a directory"), atomic_dir(tmp_path / "file/out"):
        pass
    check_new_folder(tmp_path / "new/sub/out")  # missing parents are created by atomic_dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
