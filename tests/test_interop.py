"""`lmproject export` / `import` against transformers' own LlamaForCausalLM: same logits, same greedy tokens,
the RoPE row permutation proven by behaviour, a bit-identical round trip, and refusals naming the field."""

from __future__ import annotations

import errno
import json
import shutil
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from fresh_run import run_fresh
from readme_snippets import shrunk, snippets
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tiny_fit import fails
from tiny_run import EOT, load_ours, make_run

from lmproject.interop.hf_llama import (
    LLAMA_SWITCHES,
    check_llama_expressible,
    export_folder,
    halves_to_pairs,
    pairs_to_halves,
)
from lmproject.lit.cli import run_lightning
from lmproject.lit.commands import main
from lmproject.lit.module import LanguageModel
from lmproject.nn import ModelConfig, TransformerLM, cross_entropy
from lmproject.nn.layers import RotaryEmbedding
from lmproject.sampling.config import SamplingConfig
from lmproject.sampling.generate import generate
from lmproject.tokenizer import Tokenizer
from lmproject.training import checkpoint as checkpoint_module
from lmproject.training.checkpoint_files import find_last
from lmproject.training.optim import AdamW

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {  # vocab_size, context_length, d_model, num_layers, num_heads, d_ff
    "3 heads of 16": ModelConfig(
        vocab_size=300, context_length=64, d_model=48, num_layers=2, num_heads=3, d_ff=80, rope_theta=10000.0
    ),
    "8 heads of 8, tied": ModelConfig(
        vocab_size=290,
        context_length=64,
        d_model=64,
        num_layers=3,
        num_heads=8,
        d_ff=96,
        rope_theta=500.0,
        tie_embeddings=True,
    ),
}
BYTES = Tokenizer({i: bytes([i]) for i in range(256)}, [])  # no special tokens: no EOS to stop at


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("interop")).parent


def export_argv(run, out) -> list[str]:
    return ["export", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--out", str(out)]


@pytest.fixture(scope="module")
def exported(run):
    assert main(export_argv(run, run / "hf")) == 0
    return run / "hf"


def trained(shape: ModelConfig, steps: int = 3) -> TransformerLM:
    """A model of `shape` after a few AdamW steps on random tokens (weights no longer at their init)."""
    torch.manual_seed(0)
    model = TransformerLM(shape)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        batch = torch.randint(0, shape.vocab_size, (4, shape.context_length + 1))
        cross_entropy(model(batch[:, :-1]), batch[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(ids).logits


def test_exported_run_gives_our_logits_and_tokens_in_transformers(run, exported):
    ours = load_ours(run / "run/checkpoints/last.ckpt")
    tokenizer = Tokenizer.from_dir(run / "tokenizer")
    text = (run / "stories.txt").read_text()[:2000]
    ids = torch.tensor([tokenizer.encode(text)[:32], tokenizer.encode(text)[100:132]])
    with torch.no_grad():
        assert torch.allclose(hf_logits(exported, ids), ours(ids), atol=1e-4, rtol=0)
    theirs = AutoTokenizer.from_pretrained(exported)
    assert theirs.encode(text) == tokenizer.encode(text)
    assert theirs.eos_token == EOT and theirs.eos_token_id == tokenizer.encode(EOT)[0]
    config = json.loads((exported / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == tokenizer.encode(EOT)[0]
    assert json.loads((exported / "tokenizer_config.json").read_text())["add_bos_token"] is False
    assert theirs("Once upon")["input_ids"] == tokenizer.encode("Once upon")  # no BOS put in front
    # Every file is readable as a plain open() would make it (safetensors' own writer makes files private).
    modes = {path.name: path.stat().st_mode & 0o777 for path in exported.iterdir()}
    assert set(modes.values()) == {modes["config.json"]} and modes["config.json"] & 0o044
    assert config["rope_theta"] == 500.0 and config["max_position_embeddings"] == 32


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_exported_logits_equal_ours(shape, tmp_path):
    ours = trained(shape)
    export_folder(shape, ours.state_dict(), BYTES, tmp_path / "hf", "float32")
    ids = torch.randint(0, shape.vocab_size, (2, shape.context_length))
    with torch.no_grad():
        assert torch.allclose(hf_logits(tmp_path / "hf", ids), ours(ids), atol=1e-4, rtol=0)
    if shape.tie_embeddings:
        assert "lm_head.weight" not in load_file(tmp_path / "hf/model.safetensors")


def test_fifty_greedy_tokens_from_transformers_generate_equal_ours(tmp_path):
    shape = SHAPES["3 heads of 16"]
    ours = trained(shape, steps=10)
    export_folder(shape, ours.state_dict(), BYTES, tmp_path / "hf", "float32")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    prompt = list(b"Once upon")  # + 50 tokens fit in the 64-token context: no window slides
    expected = generate(ours, [prompt], SamplingConfig(max_new_tokens=50, temperature=0.0))[0]
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=50, do_sample=False, pad_token_id=0)
    assert out[0, len(prompt) :].tolist() == expected and len(expected) == 50


def test_the_row_permutation_turns_our_rope_into_llamas():
    """Our RoPE rotates adjacent pairs; Llama's rotate_half rotates (x_i, x_{i+d/2}). Rotating with ours and
    then reordering the features as pairs_to_halves reorders rows equals Llama's RoPE on reordered input."""
    d_head, heads, seq, theta = 16, 3, 20, 500.0
    x = torch.randn(2, heads, seq, d_head)
    order = pairs_to_halves(torch.arange(d_head, dtype=torch.float32)[:, None], 1)[:, 0].long()
    config = LlamaConfig(hidden_size=heads * d_head, num_attention_heads=heads, head_dim=d_head,
                         rope_theta=theta, max_position_embeddings=seq)  # fmt: skip
    cos, sin = LlamaRotaryEmbedding(config)(x, torch.arange(seq)[None])
    ours = RotaryEmbedding(theta, d_head, seq)(x)
    theirs, _ = apply_rotary_pos_emb(x[..., order], x[..., order], cos, sin)
    assert torch.allclose(theirs, ours[..., order], atol=1e-5)
    unpermuted, _ = apply_rotary_pos_emb(x, x, cos, sin)
    assert not torch.allclose(unpermuted, ours, atol=1e-2)  # without it the two disagree
    weight = torch.randn(heads * d_head, 7)
    assert torch.equal(halves_to_pairs(pairs_to_halves(weight, heads), heads), weight)


def test_import_of_an_export_is_bit_identical(run, exported, tmp_path):
    assert main(["import", str(exported), "--out", str(tmp_path / "imported")]) == 0
    original = torch.load(run / "run/checkpoints/last.ckpt", weights_only=True)
    imported = torch.load(tmp_path / "imported/checkpoints/last.ckpt", weights_only=True)
    assert original["state_dict"].keys() == imported["state_dict"].keys()
    for name, tensor in original["state_dict"].items():
        assert imported["state_dict"][name].dtype == torch.float32
        assert torch.equal(imported["state_dict"][name], tensor), name
    # the training settings (lr...) are not part of a Hugging Face folder: the import saves a new model's
    assert imported["hyper_parameters"]["arch"] == original["hyper_parameters"]["arch"]
    arch = ModelConfig(**imported["hyper_parameters"]["arch"])
    assert imported["hyper_parameters"] == dict(LanguageModel(arch).hparams)
    before, after = Tokenizer.from_dir(run / "tokenizer"), Tokenizer.from_dir(tmp_path / "imported/tokenizer")
    for field in ("vocab", "merges", "special_tokens"):
        assert getattr(after, field) == getattr(before, field), field


def val_loss(config, *args) -> float:
    argv = ["validate", "--config", str(config), "--ckpt_path", "last", "--data.val_windows", "8"]
    cli = run_lightning([*argv, "--trainer.enable_progress_bar", "false", *args])
    return float(cli.trainer.callback_metrics["val/loss"])


@pytest.mark.slow
def test_an_imported_run_validates_predicts_and_trains_as_is(run, exported, tmp_path, capsys):
    imported = tmp_path / "imported"
    main(["import", str(exported), "--out", str(imported)])
    config = imported / "config.yaml"
    message = fails(["validate", "--config", str(config), "--ckpt_path", "last"], capsys)
    assert f"{imported}/data/valid.npy: token file not found" in message
    data = ["--data.train_path", str(run / "train.npy"), "--data.val_path", str(run / "valid.npy")]
    assert val_loss(config, *data) == pytest.approx(val_loss(run / "config.yaml"), abs=1e-5)

    samples = []
    for which in (run / "config.yaml", config):
        output = tmp_path / f"samples{len(samples)}.jsonl"
        main(["predict", "--config", str(which), "--ckpt_path", "last", "--prompt", "Once upon a time",
              "--temperature", "0", "--max_new_tokens", "20", "--output", str(output)])  # fmt: skip
        samples.append(json.loads(output.read_text())["completion"])
    assert samples[0] == samples[1] and samples[0]
    capsys.readouterr()

    # fit starts from the imported weights at step 0: with a negligible learning rate they barely move
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    main(["fit", "--config", str(config), "--ckpt_path", "last", *data, "--trainer.max_steps", "2",
          "--model.lr_max", "1e-9", "--model.lr_min", "1e-10", *quiet])  # fmt: skip
    assert "holds weights only" in capsys.readouterr().err
    trained_on = torch.load(find_last(imported / "checkpoints"), weights_only=True)
    assert trained_on["global_step"] == 2
    start = torch.load(run / "run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for name, tensor in trained_on["state_dict"].items():
        assert torch.allclose(tensor, start[name], atol=1e-6), name
    # and from then on it resumes like any run
    main(["fit", "--config", str(config), "--ckpt_path", "last", *data, "--trainer.max_steps", "3", *quiet])
    assert torch.load(find_last(imported / "checkpoints"), weights_only=True)["global_step"] == 3


def test_an_imported_run_works_from_any_directory(run, exported, tmp_path, monkeypatch, capsys):
    """`import --out runs/x` wrote paths relative to where import ran: from anywhere else `--ckpt_path last`
    found no checkpoint and the tokenizer was missing."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["import", str(exported), "--out", "runs/imported"]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = ["--config", str(tmp_path / "runs/imported/config.yaml"), "--ckpt_path", "last"]
    assert main(["evaluate", *config, "--tokens", str(run / "valid.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(
        tmp_path / "runs/imported/checkpoints/last.ckpt"
    )


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_a_transformers_model_imported_gives_its_own_logits(tmp_path, tied):
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=24,
                         rms_norm_eps=1e-5, rope_theta=2000.0, tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(0)
    theirs = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            if "norm" in name:  # not all ones, so that a swapped norm would show
                parameter.uniform_(0.5, 1.5)
    theirs.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf/model.safetensors.index.json").is_file()  # sharded
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    ours = load_ours(tmp_path / "run/checkpoints/last.ckpt")
    assert ours.config.tie_embeddings == tied
    assert "had no tokenizer.json" in (tmp_path / "run/config.yaml").read_text()  # it said "work as is"
    ids = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_key_value_heads", 1), ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
     ("attention_bias", True), ("mlp_bias", True), ("hidden_act", "gelu"), ("sliding_window", 16),
     ("model_type", "mistral"), ("rope_theta", "10000"), ("rope_theta", -1.0), ("tie_word_embeddings", "no"),
     ("vocab_size", True), ("max_position_embeddings", 10**10)],
)  # fmt: skip
def test_import_refuses_features_we_do_not_have_and_values_of_the_wrong_type(
    exported, tmp_path, capsys, field, value
):
    """(A rope_theta string was a ValueError traceback; tie_word_embeddings "no" read as tied; vocab_size true
    was refused as model.vocab_size, not naming config.json.)"""
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {field: value}))
    message = fails(["import", str(folder), "--out", str(tmp_path / "run")], capsys)
    assert field in message and "config.json" in message
    assert not (tmp_path / "run").exists()


def test_null_key_value_heads_mean_as_many_as_the_attention_heads(exported, tmp_path, capsys):
    """Hugging Face writes `num_key_value_heads: null` for "same as the heads": it was refused as
    grouped-query attention."""
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"num_key_value_heads": None}))
    assert main(["import", str(folder), "--out", str(tmp_path / "run")]) == 0
    assert load_ours(tmp_path / "run/checkpoints/last.ckpt").config.num_heads == config["num_attention_heads"]


def test_import_names_a_tensor_of_the_wrong_shape(exported, tmp_path, capsys):
    """A q_proj whose rows do not split into heads was a RuntimeError traceback from the row reordering."""
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    d_out, d_in = tensors[name].shape
    save_file(tensors | {name: torch.zeros(d_out - 4, d_in)}, folder / "model.safetensors")
    message = fails(["import", str(folder), "--out", str(tmp_path / "run")], capsys)
    assert f"{name} has shape ({d_out - 4}, {d_in}), config.json implies ({d_out}, {d_in})" in message


def test_import_refuses_non_finite_weights_by_name(exported, tmp_path, capsys):
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors")
    message = fails(["import", str(folder), "--out", str(tmp_path / "run")], capsys)
    assert message.endswith("layers.0.ffn.w2.weight holds NaN or infinite values: not a usable model")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("switch", "value"), [("norm", "post"), ("norm", "none"), ("position", "none"), ("ffn", "silu")]
)
def test_export_refuses_what_llama_cannot_express(switch, value):
    with pytest.raises(Exception, match=f"model.arch.{switch}={value!r} cannot be exported"):
        check_llama_expressible(replace(SHAPES["3 heads of 16"], **{switch: value}))
    assert switch in LLAMA_SWITCHES


def test_export_names_the_switch_and_writes_nothing(run, tmp_path, capsys):
    argv = export_argv(run, tmp_path / "x")
    assert "model.arch.norm='post'" in fails([*argv, "--model.arch.norm", "post"], capsys)
    assert not (tmp_path / "x").exists()


def test_an_out_folder_that_cannot_be_made_is_refused_before_any_work(
    run, exported, tmp_path, capsys, monkeypatch
):
    """An existing --out was found only after reading and converting every weight; --out under a file was
    `[Errno 17] File exists`."""
    monkeypatch.setattr(
        "lmproject.interop.hf_llama._load_safetensors", lambda *args: pytest.fail("read the weights")
    )
    monkeypatch.setattr("lmproject.lit.interop_cli.read_run", lambda *args: pytest.fail("read the config"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/keep.txt").write_text("mine")
    assert "already exists" in fails(["import", str(exported), "--out", str(tmp_path / "taken")], capsys)
    message = fails(export_argv(run, tmp_path / "taken/keep.txt/hf"), capsys)
    assert f"{tmp_path / 'taken/keep.txt'} is not a directory" in message


@pytest.mark.slow
def test_export_and_import_never_import_lightning(run, exported, tmp_path):
    assert run_fresh(export_argv(run, tmp_path / "hf")) == {"status": 0, "lightning": []}
    assert (tmp_path / "hf/model.safetensors").is_file()
    argv = ["import", str(exported), "--out", str(tmp_path / "imported")]
    assert run_fresh(argv) == {"status": 0, "lightning": []}
    assert (tmp_path / "imported/checkpoints/last.ckpt").is_file()


def test_export_reads_overrides_and_refuses_a_bad_setting_in_one_line(run, tmp_path, capsys):
    argv = export_argv(run, tmp_path / "x")
    message = fails([*argv, "--checkpoint.dirpath", str(tmp_path)], capsys)
    assert message == f"lmproject: error: --ckpt_path last: no last checkpoint in {tmp_path}"
    message = fails([*argv, "--model.arch.d_modle=8"], capsys)
    assert "model.arch.d_modle is not an architecture field" in message
    assert message.endswith("(did you mean --model.arch.d_model?)")
    assert "model.lr_min=-1: must be in [0, lr_max=0.01]" in fails([*argv, "--model.lr_min", "-1"], capsys)
    assert "--prompt: not a setting" in fails([*argv, "--prompt", "x"], capsys)
    assert "checkpoint of a different architecture" in fails([*argv, "--model.arch.d_ff", "96"], capsys)
    assert not (tmp_path / "x").exists()


def test_export_appears_whole_or_not_at_all(run, tmp_path, capsys, monkeypatch):
    argv = export_argv(run, tmp_path / "x")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    def safetensors_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    for name, full in (("save_tokenizer_json", disk_full), ("save_file", safetensors_full)):
        monkeypatch.setattr(f"lmproject.interop.hf_llama.{name}", full)
        # (the message named no file; safetensors' error was a traceback)
        assert fails(argv, capsys) == f"lmproject: error: {tmp_path / 'x'}: cannot write it: the disk is full"
        assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling
        monkeypatch.undo()
    (tmp_path / "x").mkdir()
    (tmp_path / "x/keep.txt").write_text("mine")
    assert "already exists" in fails(argv, capsys)
    assert main(argv[:-1] + [str(tmp_path / "y"), "--dtype", "bfloat16"]) == 0
    tensors = load_file(tmp_path / "y/model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "y/config.json").read_text())["torch_dtype"] == "bfloat16"
    ours = torch.load(run / "run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(tensors["model.embed_tokens.weight"], ours["model.token_embeddings.weight"].bfloat16())


def test_import_on_a_full_disk_names_the_run_folder_and_leaves_nothing(
    exported, tmp_path, capsys, monkeypatch
):
    """torch.save turned the full disk into `RuntimeError: ... unexpected pos 43776 vs 43728`, a traceback."""
    real = checkpoint_module.atomic_write

    class FullAfter:
        def __init__(self, file, room):
            self.file, self.room = file, room

        def write(self, data):
            self.room -= len(memoryview(data).cast("B"))
            if self.room < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

    @contextmanager
    def small_disk(path, mode="w"):
        with real(path, mode) as file:
            yield FullAfter(file, 4096)

    monkeypatch.setattr(checkpoint_module, "atomic_write", small_disk)
    message = fails(["import", str(exported), "--out", str(tmp_path / "run")], capsys)
    assert message == f"lmproject: error: {tmp_path / 'run'}: cannot write it: the disk is full"
    assert list(tmp_path.iterdir()) == []


def test_the_docs_snippet_runs_on_an_export(exported, capsys):
    snippet = snippets("docs/interop.md")["Then, offline, in transformers"]
    snippet = shrunk(snippet, {"exports/tinystories": str(exported)})
    exec(compile(snippet, "docs/interop.md", "exec"), {})
    assert capsys.readouterr().out.startswith("Once upon a time")
