import errno
import tempfile

import pytest

from lmproject import atomic
from lmproject.atomic import (
    atomic_dir,
    atomic_write,
    check_new_folder,
    naming_output,
    temp_folder,
    write_problem,
)
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


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def read_only(name):
    """A stand-in for tempfile's mkstemp/mkdtemp in a read-only folder (root writes anywhere): the error
    names the temp file, as the real one does."""

    def refuse(dir, prefix, suffix):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}abcd_123{suffix}")

    return refuse


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
        (OSError("601743 requested and 215040 written"), "the disk is full"),  # numpy's tofile
        (RuntimeError("I/O error: No space left on device (os error 28)"), "the disk is full"),  # safetensors
        (PermissionError(errno.EACCES, "Permission denied", "/x/.o.1.tmp"), "Permission denied"),
    ],
)
def test_a_write_problem_is_said_in_words(error, words):
    assert write_problem(error) == words


@pytest.mark.parametrize("writer", ["atomic_write", "atomic_dir", "temp_folder"])
def test_a_read_only_folder_is_named_by_the_output_not_the_temp_name(tmp_path, monkeypatch, writer):
    """(`.x.npy.13461._9wcp6ka.parts: Permission denied` named a file the user never gave.)"""
    monkeypatch.setattr(tempfile, "mkstemp", read_only("mkstemp"))
    monkeypatch.setattr(tempfile, "mkdtemp", read_only("mkdtemp"))
    target = tmp_path / "x.npy"
    with pytest.raises(UserError) as err:
        if writer == "temp_folder":
            temp_folder(target)
        else:
            with getattr(atomic, writer)(target):
                pass
    assert str(err.value) == f"{target}: cannot write it: Permission denied"


def test_naming_output_names_the_output_of_a_failed_write_and_passes_user_errors_on(tmp_path):
    full = r"^--output o.jsonl: cannot write it: the disk is full$"
    with pytest.raises(UserError, match=full), naming_output("--output o.jsonl"):
        no_space()
    with pytest.raises(UserError, match="^as it was$"), naming_output("o"):
        raise UserError("as it was")
