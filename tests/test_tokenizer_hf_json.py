"""tokenizer.json: transformers' AutoTokenizer (the `tokenizers` library, an independent implementation)
reading our file gives our ids; our reader gives back the same tokenizer; unsupported files are refused."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import shared

from lmproject.errors import UserError
from lmproject.tokenizer import Tokenizer, train_bpe
from lmproject.tokenizer.cli import main as bpe_main
from lmproject.tokenizer.hf_json import load_tokenizer_json, save_tokenizer_json, tokenizer_json
from lmproject.tools.stories import generate_stories

transformers = pytest.importorskip("transformers")

EOT = "<|endoftext|>"
# Text none of the tokenizers was trained on: other scripts, emoji (multi-byte, with joiners), code,
# whitespace runs, digits, contractions, and special tokens that touch words or each other.
UNSEEN = (
    "Grüße aus Köln! Ça coûte 12,50 €. 日本語のテキスト。 Привет, мир! مرحبا 👩‍👩‍👧 🙂🙂 ✓\n"
    "def f(x):\n\treturn x**2  # it's   fine\r\n\n\n   I'll 2024-01-02\u00a0\u3000end   "
)
SPECIALS = f"{EOT}Once{EOT}{EOT} upon a time<|endoftext|\n{EOT} 🙂{EOT}"


def auto_tokenizer(tokenizer: Tokenizer, folder):
    """transformers' AutoTokenizer on a folder with our tokenizer.json (and the config naming the class)."""
    folder.mkdir(exist_ok=True)
    save_tokenizer_json(
        folder / "tokenizer.json", tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False})
    )
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def stories_tokenizer(tmp_path_factory) -> Tokenizer:
    """Trained here on generated stories: needs no fixture files."""
    path = tmp_path_factory.mktemp("stories") / "stories.txt"
    path.write_text(f"\n{EOT}\n".join(itertools.islice(generate_stories(seed=3), 80)), encoding="utf-8")
    return Tokenizer(*train_bpe(path, 400, [EOT], num_workers=1, progress=False)[:2], [EOT])


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.from_files(shared("gpt2_vocab.json"), shared("gpt2_merges.txt"), [EOT])


@pytest.fixture(scope="module")
def corpus_tokenizer() -> Tokenizer:
    vocab, merges = train_bpe(shared("corpus.en"), 1000, [EOT], num_workers=1, progress=False)
    return Tokenizer(vocab, merges, [EOT])


def fixture_texts() -> dict[str, str]:
    names = ["corpus.en", "german.txt", "address.txt", "tinystories_sample.txt"]
    return {name: shared(name).read_text(encoding="utf-8") for name in names}


def assert_same_as_auto_tokenizer(ours: Tokenizer, theirs, texts: dict[str, str]) -> None:
    for name, text in texts.items():
        ids = ours.encode(text)
        assert theirs.encode(text) == ids, name
        assert theirs.decode(ids) == ours.decode(ids) == text, name


def test_auto_tokenizer_gives_our_ids_for_a_tokenizer_trained_here(stories_tokenizer, tmp_path):
    theirs = auto_tokenizer(stories_tokenizer, tmp_path / "hf")
    stories = "\n".join(itertools.islice(generate_stories(seed=9), 20))
    texts = {"stories": stories, "unseen": UNSEEN, "specials": SPECIALS}
    assert_same_as_auto_tokenizer(stories_tokenizer, theirs, texts)
    assert theirs.convert_tokens_to_ids(EOT) == stories_tokenizer.encode(EOT)[0]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gpt2", "corpus_tokenizer"])
def test_auto_tokenizer_gives_our_ids_on_the_cs336_fixtures(which, request, tmp_path):
    ours = request.getfixturevalue(which)
    theirs = auto_tokenizer(ours, tmp_path / "hf")
    texts = fixture_texts() | {"unseen": UNSEEN, "specials": SPECIALS}
    assert_same_as_auto_tokenizer(ours, theirs, texts)


def test_gpt2_ids_are_gpt2s(gpt2, tmp_path):
    theirs = auto_tokenizer(gpt2, tmp_path / "hf")
    assert theirs.encode("Hello world") == [15496, 995]
    assert theirs.encode(EOT) == [50256]


def test_reading_our_file_gives_back_the_same_tokenizer(stories_tokenizer, tmp_path):
    save_tokenizer_json(
        tmp_path / "tokenizer.json",
        stories_tokenizer.vocab,
        stories_tokenizer.merges,
        stories_tokenizer.special_tokens,
    )
    vocab, merges, specials = load_tokenizer_json(tmp_path / "tokenizer.json")
    assert (vocab, merges, specials) == (stories_tokenizer.vocab, stories_tokenizer.merges, [EOT])
    reloaded = Tokenizer.from_dir(tmp_path)  # a folder with only tokenizer.json
    assert reloaded.encode(UNSEEN + SPECIALS) == stories_tokenizer.encode(UNSEEN + SPECIALS)


def test_gpt2s_own_spelling_is_read(stories_tokenizer, tmp_path):
    """GPT-2's tokenizer.json: a ByteLevel pre-tokenizer with its built-in regex, merges as pairs."""
    document = tokenizer_json(
        stories_tokenizer.vocab, stories_tokenizer.merges, stories_tokenizer.special_tokens
    )
    document["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    document["model"]["merges"] = [merge.split(" ") for merge in document["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(document))
    vocab, merges, specials = load_tokenizer_json(tmp_path / "tokenizer.json")
    assert (vocab, merges, specials) == (stories_tokenizer.vocab, stories_tokenizer.merges, [EOT])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer 'NFC'"),
        (lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\w+"), "pre_tokenizer"),
        (lambda d: d["model"].update(byte_fallback=True), "model.byte_fallback"),
        (lambda d: d["model"].update(type="WordPiece"), "model.type"),
        (lambda d: d["added_tokens"][0].update(lstrip=True), "strips spaces"),
        (lambda d: d["model"]["vocab"].update({"▁x": 999}), "not in GPT-2's byte alphabet"),
    ],
)
def test_files_that_would_give_other_ids_are_refused(stories_tokenizer, tmp_path, change, message):
    document = tokenizer_json(
        stories_tokenizer.vocab, stories_tokenizer.merges, stories_tokenizer.special_tokens
    )
    change(document)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=message) as error:
        Tokenizer.from_dir(tmp_path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_lmproject_bpe_export_writes_tokenizer_json(stories_tokenizer, tmp_path, capsys):
    stories_tokenizer.save(tmp_path / "tok")
    assert bpe_main(["export", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text()) == tokenizer_json(
        stories_tokenizer.vocab, stories_tokenizer.merges, stories_tokenizer.special_tokens
    )
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(added_tokens=["<|endoftext|>"]), "added_tokens"),
        (lambda d: d["added_tokens"][0].update(content=5), "added_tokens"),
        (lambda d: d["model"].update(vocab=["a", "b"]), "model.vocab"),
        (lambda d: d["model"]["vocab"].update(a="97"), "model.vocab"),
        (lambda d: d["model"]["vocab"].update(zz=d["model"]["vocab"]["Ġ"]), "model.vocab: id .* two tokens"),
        (lambda d: d["model"].update(merges=[5]), "model.merges"),
        (lambda d: d.update(normalizer="NFC"), "normalizer"),
        (lambda d: d.update(decoder="ByteLevel"), "decoder"),
        (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": ["Split", "ByteLevel"]}),
         "pre_tokenizer"),
        (lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(pattern=r"\w+"), "pre_tokenizer"),
    ],
)  # fmt: skip
def test_malformed_files_are_a_one_line_error(stories_tokenizer, tmp_path, change, message):
    """Fields of the wrong JSON type were tracebacks (AttributeError, TypeError), and two tokens with one id
    silently lost one of them."""
    document = tokenizer_json(
        stories_tokenizer.vocab, stories_tokenizer.merges, stories_tokenizer.special_tokens
    )
    change(document)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=message) as error:
        load_tokenizer_json(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
