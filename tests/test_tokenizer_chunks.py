"""Planning a file's chunks for the workers, and getting their results back in file order."""

from __future__ import annotations

from itertools import pairwise

import pytest

from lmproject.errors import UserError
from lmproject.tokenizer.chunks import MIN_CHUNK_BYTES, check_options, map_chunks, plan_chunks


def chunk_length(job: tuple[int, int]) -> int:
    return job[1] - job[0]


def test_chunks_balance_the_workers_within_the_size_limits(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"the cat sat on the mat\n" * 200_000)  # 4.6 MB
    sizes = [b - a for a, b in pairwise(plan_chunks(path, num_workers=2))]
    assert len(sizes) == 5 and min(sizes[:-1]) >= MIN_CHUNK_BYTES  # four per worker, but none below 1 MiB
    sizes = [b - a for a, b in pairwise(plan_chunks(path, num_workers=2, max_chunk_bytes=100_000))]
    assert max(sizes) < 100_000 + 64 and sum(sizes) == path.stat().st_size


@pytest.mark.parametrize("num_workers", [1, 2])
def test_results_come_back_in_file_order(tmp_path, num_workers, capsys):
    bounds = [0, 5, 7, 20, 21, 40]
    jobs = list(pairwise(bounds))
    results = map_chunks(chunk_length, jobs, bounds, num_workers=num_workers, desc="count")
    assert list(results) == [5, 2, 13, 1, 19]
    assert "| 40.0/40.0 " in capsys.readouterr().err  # the bar ends at the file size


def test_bad_options_are_user_errors(tmp_path):
    assert check_options(None, "strict") >= 1
    with pytest.raises(UserError, match="num_workers must be at least 1, got 0"):
        check_options(0, "strict")
    with pytest.raises(UserError, match="errors must be 'strict' or 'replace', got 'ignore'"):
        check_options(1, "ignore")
    with pytest.raises(UserError, match="is a directory, expected a text file"):
        plan_chunks(tmp_path, 1)
    with pytest.raises(UserError, match=r"nope\.txt: cannot read: No such file"):
        plan_chunks(tmp_path / "nope.txt", 1)
