"""The built-in story generator: reproducible, separated documents, enough variety to learn from."""

import random

import pytest

from lmproject.tools import stories


def test_same_seed_same_corpus_and_different_seed_differs(tmp_path):
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    stories.write_corpus(a, 0.05, seed=1, progress=False)
    stories.write_corpus(b, 0.05, seed=1, progress=False)
    stories.write_corpus(c, 0.05, seed=2, progress=False)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_documents_are_separated_and_size_is_met(tmp_path):
    out = tmp_path / "s.txt"
    written = stories.write_corpus(out, 0.1, seed=0, progress=False)
    data = out.read_text(encoding="utf-8")
    assert written == len(data.encode("utf-8")) >= 100_000
    assert data.endswith(f"\n{stories.SEPARATOR}\n")
    docs = [d.strip() for d in data.split(stories.SEPARATOR)][:-1]
    assert len(docs) > 100 and all(docs) and all(stories.SEPARATOR not in d for d in docs)
    assert "{" not in data and "}" not in data  # every template field was filled in
    assert [p for p in tmp_path.iterdir()] == [out]  # no temp file left behind


def test_stories_vary_in_characters_places_plots_and_dialogue():
    rng = random.Random(0)
    docs = [stories.generate_story(rng) for _ in range(300)]
    assert len(set(docs)) == len(docs)
    text = "\n".join(docs)
    assert sum(name in text for name in stories.GIRLS + stories.BOYS) >= 20
    assert sum(place in text for place in stories.PLACES) == len(stories.PLACES)
    assert sum(d.count('"') >= 2 for d in docs) > 200
    openings = {d.split(".")[0].split(",")[0].split(" ")[0] for d in docs}
    assert len(openings) > 10
    assert len(set(text.split())) > 300


def test_cli_writes_file_and_rejects_bad_size(tmp_path, capsys):
    out = tmp_path / "x" / "s.txt"
    assert stories.main(["--out", str(out), "--size-mb", "0.01", "--seed", "3"]) == 0
    assert out.stat().st_size >= 10_000
    with pytest.raises(SystemExit) as info:
        stories.main(["--out", str(tmp_path / "y.txt"), "--size-mb", "0"])
    assert info.value.code == 2 and "--size-mb must be positive" in capsys.readouterr().err
    assert not (tmp_path / "y.txt").exists()
    with pytest.raises(SystemExit):
        stories.main(["--out", str(out / "z.txt")])  # out is a file, not a folder
    assert f"{out} is not a folder" in capsys.readouterr().err
