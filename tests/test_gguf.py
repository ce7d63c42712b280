"""`lmproject export --format gguf`: the file read back with the gguf package's own reader, a llama-format
forward over its tensors (llama.cpp's RoPE) equal to our logits, its vocabulary rebuilding our tokenizer, and
refusals with nothing half-written."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import shared
from tiny_fit import fails
from tiny_run import EOT, make_run

from lmproject.errors import UserError
from lmproject.interop.gguf import export_gguf
from lmproject.interop.hf_llama import LLAMA_SWITCHES, pairs_to_halves
from lmproject.lit.commands import main
from lmproject.nn import ModelConfig, TransformerLM
from lmproject.tokenizer import Tokenizer
from lmproject.tokenizer.files import str_to_token

gguf = pytest.importorskip("gguf")

SHAPES = {
    "3 heads of 16": ModelConfig(
        vocab_size=300, context_length=48, d_model=48, num_layers=2, num_heads=3, d_ff=96, rope_theta=10000.0
    ),
    "4 heads of 8, tied": ModelConfig(
        vocab_size=290, context_length=48, d_model=32, num_layers=3, num_heads=4, d_ff=64, rope_theta=500.0,
        tie_embeddings=True,
    ),
}  # fmt: skip
BYTES = Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOT])
TEXT = 'Once upon a time, Tom saw a 🐶 and said "Hi!"<|endoftext|>\n\n  Ünïcödé   123 4567 it\'s<|endoftext|>'

pytestmark = pytest.mark.usefixtures("one_thread")


def model_of(shape: ModelConfig) -> TransformerLM:
    """A model of `shape` whose every weight is random (the norms' gains too, which start at one)."""
    torch.manual_seed(0)
    model = TransformerLM(shape).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def read_gguf(path) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """The file's metadata (without the GGUF.* header fields), its tensors in float32 and their GGML types."""
    reader = gguf.GGUFReader(path)
    metadata = {
        name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")
    }
    tensors = {
        t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()) for t in reader.tensors
    }
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return metadata, tensors, types


def rope_adjacent_pairs(x: torch.Tensor, base: float) -> torch.Tensor:
    """llama.cpp's "normal" RoPE (GGML_ROPE_TYPE_NORMAL, the llama architecture's): dims (2i, 2i+1) rotate
    together by position * base^(-2i/d)."""
    d = x.shape[-1]
    angle = torch.arange(x.shape[-2])[:, None] * base ** (-torch.arange(0, d, 2) / d)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack(
        (x0 * angle.cos() - x1 * angle.sin(), x0 * angle.sin() + x1 * angle.cos()), -1
    ).flatten(-2)


def rope_halves(x: torch.Tensor, base: float) -> torch.Tensor:
    """GGML_ROPE_TYPE_NEOX: dims (i, i + d/2) rotate together; the wrong convention for our rows."""
    d = x.shape[-1]
    angle = torch.arange(x.shape[-2])[:, None] * base ** (-torch.arange(0, d, 2) / d)
    x0, x1 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((x0 * angle.cos() - x1 * angle.sin(), x0 * angle.sin() + x1 * angle.cos()), -1)


def llama_forward(metadata: dict, tensors: dict[str, torch.Tensor], ids: list[int], rope=rope_adjacent_pairs):
    """Logits of llama.cpp's llama graph, written from the GGUF keys and tensor names alone."""
    heads, eps = metadata["llama.attention.head_count"], metadata["llama.attention.layer_norm_rms_epsilon"]
    base = metadata["llama.rope.freq_base"]

    def norm(x, gain):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain

    x, seq = tensors["token_embd.weight"][ids], len(ids)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for i in range(metadata["llama.block_count"]):
        block = {name.split(".")[2]: t for name, t in tensors.items() if name.startswith(f"blk.{i}.")}
        h = norm(x, block["attn_norm"])
        q, k, v = (
            (h @ block[n].T).view(seq, heads, -1).transpose(0, 1) for n in ("attn_q", "attn_k", "attn_v")
        )
        q, k = rope(q, base), rope(k, base)
        scores = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).masked_fill(~causal, -math.inf)
        x = x + (scores.softmax(-1) @ v).transpose(0, 1).reshape(seq, -1) @ block["attn_output"].T
        h = norm(x, block["ffn_norm"])
        x = x + (F.silu(h @ block["ffn_gate"].T) * (h @ block["ffn_up"].T)) @ block["ffn_down"].T
    output = tensors.get("output.weight", tensors["token_embd.weight"])
    return norm(x, tensors["output_norm.weight"]) @ output.T


def tokenizer_of(metadata: dict) -> Tokenizer:
    """Our Tokenizer rebuilt from the file's vocabulary and merges alone (padding ids left out)."""
    vocab, special = {}, []
    for token_id, (token, kind) in enumerate(
        zip(metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"], strict=True)
    ):
        if kind == gguf.TokenType.CONTROL:
            special.append(token)
            vocab[token_id] = token.encode("utf-8")
        elif kind == gguf.TokenType.NORMAL:
            vocab[token_id] = str_to_token(token)
    merges = [
        tuple(str_to_token(part) for part in merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]
    ]
    return Tokenizer(vocab, merges, special)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("gguf")).parent


def export_argv(run, out, *extra) -> list[str]:
    config = ["--config", str(run / "config.yaml"), "--ckpt_path", "last"]
    return ["export", *config, "--format", "gguf", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def exported(run):
    assert main(export_argv(run, run / "model.gguf")) == 0
    return run / "model.gguf"


def test_the_file_reads_back_key_by_key_and_tensor_by_tensor(run, exported):
    saved = torch.load(run / "run/checkpoints/last.ckpt", weights_only=True)
    arch = ModelConfig(**saved["hyper_parameters"]["arch"])
    tokenizer = Tokenizer.from_dir(run / "tokenizer")
    metadata, tensors, types = read_gguf(exported)
    eos = tokenizer.encode(EOT)[0]
    keys = {k: v for k, v in metadata.items() if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
    assert keys == {
        "general.architecture": "llama", "general.name": "lmproject", "general.file_type": 0,
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "llama.context_length": 32, "llama.embedding_length": 32, "llama.block_count": 2,
        "llama.feed_forward_length": 64, "llama.attention.head_count": 2, "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16, "llama.rope.freq_base": 500.0, "llama.vocab_size": 320,
        "llama.attention.layer_norm_rms_epsilon": pytest.approx(1e-5),
        "tokenizer.ggml.bos_token_id": eos, "tokenizer.ggml.eos_token_id": eos,
    }  # fmt: skip
    assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "gpt-2"
    assert (
        metadata["tokenizer.ggml.add_bos_token"] is False
        and metadata["tokenizer.ggml.add_eos_token"] is False
    )
    tokens, kinds = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
    assert len(tokens) == len(kinds) == 320 and tokens[eos] == EOT and kinds[eos] == gguf.TokenType.CONTROL
    assert tokens[tokenizer.encode(" the")[0]] == "Ġthe"  # GPT-2's byte alphabet: the space is Ġ
    assert tokens[-1] == "[PAD319]" and kinds[-1] == gguf.TokenType.UNUSED  # the tokenizer has fewer ids
    assert len(metadata["tokenizer.ggml.merges"]) == len(tokenizer.merges)
    ours = {name.removeprefix("model."): t for name, t in saved["state_dict"].items()}
    expected = {
        "token_embd.weight": ours["token_embeddings.weight"], "output_norm.weight": ours["ln_final.weight"],
        "output.weight": ours["lm_head.weight"],
    }  # fmt: skip
    layer_names = {
        "attn_norm": "ln1", "attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj",
        "attn_output": "attn.output_proj", "ffn_norm": "ln2", "ffn_gate": "ffn.w1", "ffn_up": "ffn.w3",
        "ffn_down": "ffn.w2",
    }  # fmt: skip
    for i in range(arch.num_layers):
        expected |= {f"blk.{i}.{g}.weight": ours[f"layers.{i}.{o}.weight"] for g, o in layer_names.items()}
    assert tensors.keys() == expected.keys() and set(types.values()) == {"F32"}
    for name, tensor in expected.items():
        assert torch.equal(tensors[name], tensor), name


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "q8_0"])
def test_half_precision_and_q8_0_hold_the_checkpoint_within_their_rounding(run, exported, tmp_path, dtype):
    assert main(export_argv(run, tmp_path / "m.gguf", "--dtype", dtype)) == 0
    float32 = read_gguf(exported)[1]
    metadata, tensors, types = read_gguf(tmp_path / "m.gguf")
    type_name = {"bfloat16": "BF16", "float16": "F16", "q8_0": "Q8_0"}[dtype]
    assert metadata["general.file_type"] == {"bfloat16": 32, "float16": 1, "q8_0": 7}[dtype]
    for name, tensor in float32.items():
        assert types[name] == ("F32" if tensor.ndim == 1 else type_name), name  # the norms stay float32
        if tensor.ndim == 1 or dtype != "q8_0":
            rounded = tensor.bfloat16().float() if dtype == "bfloat16" else tensor.half().float()
            assert torch.equal(tensors[name], tensor if tensor.ndim == 1 else rounded), name
        else:  # blocks of 32 weights, each an int8 times its block's scale max |w| / 127, stored in float16
            scale = tensor.view(-1, 32).abs().amax(1, keepdim=True) / 127
            error = (tensors[name] - tensor).view(-1, 32).abs()  # half a step, plus 127 times the scale's
            assert (error <= scale * (0.5 + 127 * 2**-11)).all() and error.max() > 0, name


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_llama_forward_with_llama_cpps_rope_over_the_file_gives_our_logits(shape, tmp_path):
    ours = model_of(shape)
    export_gguf(shape, ours.state_dict(), BYTES, tmp_path / "m.gguf", "float32")
    metadata, tensors, _ = read_gguf(tmp_path / "m.gguf")
    assert ("output.weight" in tensors) != shape.tie_embeddings
    ids = torch.randint(0, shape.vocab_size, (shape.context_length,)).tolist()
    with torch.no_grad():
        expected = ours(torch.tensor([ids]))[0]
        assert torch.allclose(llama_forward(metadata, tensors, ids), expected, atol=1e-4, rtol=0)
        # NeoX's rotation (halves) over the same rows does not: this row order is what llama.cpp needs.
        assert not torch.allclose(llama_forward(metadata, tensors, ids, rope_halves), expected, atol=1e-2)


def test_llama_cpps_own_converter_would_write_our_rows_from_the_hugging_face_export():
    """convert_hf_to_gguf.py's LlamaModel.permute (reshape to (heads, 2, d_head/2, d_in), swap the middle
    axes) turns Hugging Face's half-split rows back into adjacent pairs: applied to the rows of our Hugging
    Face export, it gives our rows unchanged, which is what the GGUF export writes."""
    shape = SHAPES["3 heads of 16"]
    q = model_of(shape).state_dict()["layers.0.attn.q_proj.weight"]
    hf_rows = pairs_to_halves(q, shape.num_heads)
    converted = hf_rows.reshape(shape.num_heads, 2, shape.d_head // 2, -1).swapaxes(1, 2).reshape(q.shape)
    assert torch.equal(converted, q) and not torch.equal(hf_rows, q)


def test_the_files_vocabulary_and_merges_rebuild_our_tokenizer(run, exported):
    ours = Tokenizer.from_dir(run / "tokenizer")
    rebuilt = tokenizer_of(read_gguf(exported)[0])
    text = (run / "stories.txt").read_text()[:3000] + TEXT
    assert rebuilt.encode(text) == ours.encode(text) and EOT in rebuilt.special_tokens


@pytest.mark.slow
def test_gpt2s_vocabulary_rebuilds_from_the_file(tmp_path):
    """The CS336 fixtures: GPT-2's 50257 tokens and 50000 merges through the file, on the fixture texts."""
    gpt2 = Tokenizer.from_files(shared("gpt2_vocab.json"), shared("gpt2_merges.txt"), [EOT])
    shape = ModelConfig(vocab_size=50257, context_length=8, d_model=8, num_layers=1, num_heads=1, d_ff=8)
    weights = {name: torch.zeros(t.shape) for name, t in TransformerLM(shape).state_dict().items()}
    export_gguf(shape, weights, gpt2, tmp_path / "m.gguf", "float32")
    rebuilt = tokenizer_of(read_gguf(tmp_path / "m.gguf")[0])
    for name in ("tinystories_sample.txt", "address.txt", "german.txt"):
        text = shared(name).read_text(encoding="utf-8")
        assert rebuilt.encode(text) == gpt2.encode(text), name
    assert rebuilt.encode(TEXT) == gpt2.encode(TEXT)


@pytest.mark.parametrize(("switch", "value"), [("norm", "post"), ("position", "none"), ("ffn", "silu")])
def test_what_llama_cpp_cannot_express_is_refused_and_nothing_is_written(switch, value, tmp_path):
    shape = replace(SHAPES["3 heads of 16"], **{switch: value})
    with pytest.raises(UserError, match=f"model.arch.{switch}={value!r} cannot be exported"):
        export_gguf(shape, model_of(shape).state_dict(), BYTES, tmp_path / "m.gguf", "float32")
    assert switch in LLAMA_SWITCHES and list(tmp_path.iterdir()) == []


def test_the_file_appears_whole_or_not_at_all(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.gguf"
    assert "model.arch.norm='post'" in fails([*export_argv(run, out), "--model.arch.norm", "post"], capsys)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)  # after the header went out
    assert fails(export_argv(run, out), capsys).endswith(f"{out}: cannot write it: the disk is full")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary sibling
    monkeypatch.undo()
    out.write_text("mine")
    assert "already exists" in fails(export_argv(run, out), capsys)
    assert out.read_text() == "mine"
    assert "--dtype q8_0 is not available for --format hf" in fails(
        [*export_argv(run, tmp_path / "hf"), "--format", "hf", "--dtype", "q8_0"], capsys
    )
    assert f"--out {tmp_path}: is a directory" in fails(export_argv(run, tmp_path), capsys)
