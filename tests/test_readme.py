"""The README's Python snippets run as written (sizes shrunk where they would take minutes on a CPU), so they
cannot drift from the code. The Hugging Face snippet runs on a real export in tests/test_interop.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from readme_snippets import readme_snippets, shrunk

from lmproject.tools.stories import generate_stories

EOT = "<|endoftext|>"


def test_the_tokenizer_snippet(tmp_path, monkeypatch):
    text = f"\n{EOT}\n".join(itertools.islice(generate_stories(seed=0), 40))
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = shrunk(readme_snippets()["Tokenizer: `lmproject-bpe`"], {"vocab_size=10_000": "vocab_size=400"})
    code = code.replace("        ...", "        seen.append(token_id)")
    scope = {"seen": []}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["text"] == f"Once upon a time{EOT}"
    assert scope["seen"] == scope["tok"].encode(text)
    assert sorted(p.name for p in (tmp_path / "my_tokenizer").iterdir()) == [
        "merges.txt", "special_tokens.json", "vocab.json",
    ]  # fmt: skip


@pytest.mark.slow
def test_the_plain_pytorch_snippet():
    code = shrunk(
        readme_snippets()["The model and optimizer (plain PyTorch, no Lightning)"],
        {"d_model=512": "d_model=32", "d_ff=1344": "d_ff=64", "num_heads=16": "num_heads=4",
         "max_new_tokens=256": "max_new_tokens=5"},
    )  # fmt: skip
    tokens = np.random.default_rng(0).integers(0, 10_000, 2_000).astype(np.uint16)
    scope = {"tokens": tokens, "prompt_ids": [1, 2, 3], "eot_id": 0}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["loss"].item() == pytest.approx(np.log(10_000), rel=0.1)  # an untrained model: about ln V
    assert len(scope["completions"]) == 1 and 1 <= len(scope["completions"][0]) <= 5


def test_every_snippet_is_run_by_a_test():
    run_here = {"Tokenizer: `lmproject-bpe`", "The model and optimizer (plain PyTorch, no Lightning)"}
    run_in_test_interop = {"Use your model elsewhere: `lmproject export | import`"}
    assert set(readme_snippets()) == run_here | run_in_test_interop
