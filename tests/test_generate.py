"""generate: KV-cached greedy equals full recomputation, sampling filters, seeds, EOS, bad input."""

import copy

import pytest
import torch
from reference_model import greedy_recompute, single_thread, top_p_by_full_sort

from lmproject import precision
from lmproject.errors import UserError
from lmproject.nn import TransformerLM
from lmproject.precision import cpu_supports_bf16
from lmproject.sampling import generate as generate_module
from lmproject.sampling.config import SamplingConfig, SamplingError
from lmproject.sampling.generate import (
    NUCLEUS_FIRST_RANKS,
    filter_top_k,
    filter_top_p,
    for_decoding,
    generate,
    generate_steps,
    sample_next_token,
)
from lmproject.sampling.kv_cache import KVCache

SMALL = dict(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():  # token-by-token loops over a tiny model
        yield


def greedy(max_new_tokens, **settings):
    """Greedy decoding of max_new_tokens tokens, with other settings as given."""
    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=0, **settings)


def small_model(seed=0, **switches):
    torch.manual_seed(seed)
    return TransformerLM(**SMALL, **switches)


def test_cached_forward_matches_full_forward_for_left_padded_rows():
    model = small_model()
    prompts = [torch.randint(0, 64, (n,)) for n in (3, 9)]
    cache = KVCache.for_model(model, 2, torch.tensor([6, 0]))
    padded = torch.stack([torch.cat([torch.zeros(6, dtype=torch.long), prompts[0]]), prompts[1]])
    prefill = model(padded, kv_cache=cache)
    step = model(torch.tensor([[5], [7]]), kv_cache=cache)[:, 0]
    for row, prompt in enumerate(prompts):
        full = model(torch.cat([prompt, torch.tensor([[5], [7]][row])])[None])[0]
        torch.testing.assert_close(prefill[row, -len(prompt) :], full[:-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[row], full[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention,window_slide", [("fused", 1), ("math", 1), ("fused", 5), ("math", 16)])
def test_greedy_with_cache_equals_recomputing_each_step(attention, window_slide):
    model = small_model(attention=attention).double()  # float64: no near-ties flip an argmax
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], list(range(20, 40))]  # the last is longer than the context
    completions = generate(model, prompts, greedy(30, window_slide=window_slide))  # past the context
    for prompt, completion in zip(prompts, completions, strict=True):
        assert completion == greedy_recompute(model, prompt, 30, window_slide)


def test_default_window_slide_is_a_quarter_of_the_context():
    model = small_model().double()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    assert generate(model, [prompt], greedy(40)) == [greedy_recompute(model, prompt, 40, 4)]
    assert generate(model, [prompt], greedy(40)) != generate(model, [prompt], greedy(40, window_slide=1))


@pytest.mark.parametrize("window_slide", [1, 3, 8])
def test_each_row_of_a_batch_slides_its_window_as_if_alone(window_slide):
    model = small_model().double()
    prompts = [[7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4, 4, 2, 9, 9]]  # windows fill at different steps
    batch = generate(model, prompts, greedy(40, window_slide=window_slide))
    alone = [generate(model, [prompt], greedy(40, window_slide=window_slide))[0] for prompt in prompts]
    assert batch == alone


def test_rows_whose_windows_move_at_different_steps_are_re_encoded_alone():
    """A row that still fits in the context keeps its cache when another row's window moves, so prompts of
    different lengths cost about what equal ones do (re-encoded rows x tokens, counted at the embedding)."""
    model = small_model()
    shapes = []
    hook = model.token_embeddings.register_forward_hook(lambda module, args, _: shapes.append(args[0].shape))

    def re_encoded(prompts):
        shapes.clear()
        generate(model, prompts, greedy(60, window_slide=4))
        return sum(rows * width for rows, width in shapes[1:] if width > 1)  # after the prompts' encoding

    equal, mixed = re_encoded([[1] * 5] * 4), re_encoded([[1] * n for n in (5, 6, 7, 8)])
    hook.remove()
    assert mixed <= 2 * equal  # 1.3x here (padding columns count); re-encoding every row each time: 5.2x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_generate_on_cuda_gives_the_cpu_tokens():
    model = small_model().double()  # float64: no near-ties flip an argmax
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], list(range(20, 40))]  # mixed lengths, one past the context
    on_cpu = generate(model, prompts, greedy(30, window_slide=3))
    assert generate(model.cuda(), prompts, greedy(30, window_slide=3)) == on_cpu
    seeded = SamplingConfig(max_new_tokens=30, temperature=1.0, top_p=0.9, top_k=20, seed=1)
    assert generate(model, prompts, seeded) == generate(model, prompts, seeded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("window_slide", [1, 3])
def test_cuda_graph_replay_gives_the_eager_tokens(window_slide):
    model = small_model().double().cuda()
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], list(range(20, 40))]  # windows slide, alone and all together
    eager = generate(model, prompts, greedy(30, window_slide=window_slide))
    assert generate(model, prompts, greedy(30, window_slide=window_slide), cuda_graph=True) == eager
    seeded = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=2)
    assert generate(model, prompts[:1], seeded, cuda_graph=True) == generate(model, prompts[:1], seeded)


@pytest.mark.parametrize("window_slide", [1, 3])
def test_generation_on_a_static_cache_gives_the_tokens_of_the_growing_one(monkeypatch, window_slide):
    """What cuda_graph=True runs, with each step launched eagerly instead of replayed (CPU): the static cache
    through the prefill, the per-row slides and the full re-encodes."""
    monkeypatch.setattr(generate_module, "CUDAGraphStep", generate_module._eager_step)
    model = small_model().double()
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], list(range(20, 40))]
    growing = generate(model, prompts, greedy(30, window_slide=window_slide))
    assert generate(model, prompts, greedy(30, window_slide=window_slide), cuda_graph=True) == growing


def test_cuda_graph_on_the_cpu_is_refused():
    with pytest.raises(UserError, match="cuda_graph needs the model on a CUDA device"):
        generate(small_model(), [[1, 2]], SamplingConfig(max_new_tokens=3), cuda_graph=True)


def test_static_cache_steps_match_the_growing_cache():
    """The static cache (one-token steps over all slots, for CUDA graphs) computes what the growing one
    does: with padding, after its oldest slots are dropped, and after a reset."""
    model = small_model().double()
    caches = [KVCache.for_model(model, 2, torch.tensor([3, 0]), static=static) for static in (False, True)]

    def run(tokens):
        results = [model.next_token_logits(tokens, kv_cache=cache) for cache in caches]
        torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)

    run(torch.randint(0, 64, (2, 6)))
    for token in range(6):
        run(torch.tensor([[token], [token + 9]]))
    for cache in caches:
        cache.drop_oldest(3, torch.tensor([0, 0]))
    for token in range(4):
        run(torch.tensor([[token], [token + 9]]))
    for cache in caches:
        cache.reset(torch.tensor([0, 2]))
    run(torch.randint(0, 64, (2, 5)))
    run(torch.tensor([[1], [2]]))


def test_float32_decoding_runs_the_model_itself_and_a_converted_copy_leaves_it_alone():
    model = small_model()
    assert for_decoding(model) is model  # float32 on the CPU: the model's own weights, no copy
    double = for_decoding(model, torch.float64)
    assert double.lm_head.weight.dtype == torch.float64 and model.lm_head.weight.dtype == torch.float32
    assert torch.equal(double.layers[0].ffn.w1.weight, model.layers[0].ffn.w1.weight.double())
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], list(range(20, 40))]
    completions = generate(model, prompts, greedy(30, window_slide=3))
    assert completions == [greedy_recompute(model, prompt, 30, 3) for prompt in prompts]


def test_bfloat16_generation_where_the_cpu_has_it(monkeypatch):
    model = small_model()
    if cpu_supports_bf16():
        converted = copy.deepcopy(model).to(torch.bfloat16)
        tokens = generate(model, [[1, 2, 3]], greedy(10, dtype="bfloat16"))
        assert tokens == generate(converted, [[1, 2, 3]], greedy(10))
        assert model.lm_head.weight.dtype == torch.float32
        decoding = for_decoding(converted)  # bf16 on the CPU: the from-scratch attention, on a copy
        assert {layer.attn.attention for layer in decoding.layers} == {"math"}
        assert {layer.attn.attention for layer in converted.layers} == {"fused"}
        assert for_decoding(decoding) is decoding
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with pytest.raises(UserError, match="bfloat16: this CPU has no native bf16"):
        generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=10, dtype="bfloat16"))


def test_generate_steps_streams_the_same_tokens_as_generate():
    model = small_model()
    prompts = [[3, 1, 4, 1, 5], [2, 7]]
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.8, eos_id=9, seed=7)
    steps = list(generate_steps(model, prompts, sampling))
    streamed = [[step[row] for step in steps if step[row] is not None] for row in range(2)]
    assert streamed == generate(model, prompts, sampling)


def test_streaming_leaves_the_callers_grad_mode_alone():
    steps = generate_steps(small_model(), [[1, 2]], SamplingConfig(max_new_tokens=3))
    for _ in steps:
        assert torch.is_grad_enabled()


def test_eos_stops_each_sequence_on_its_own():
    model = small_model().double()
    prompts = [[1, 2, 3], [9, 8]]
    free = generate(model, prompts, greedy(12))
    eos = free[0][3]
    stopped = generate(model, prompts, greedy(12, eos_id=eos))
    for row in range(2):
        end = free[row].index(eos) + 1 if eos in free[row] else len(free[row])
        assert stopped[row] == free[row][:end]  # includes the EOS token, nothing after it
    assert stopped[0][-1] == eos and len(stopped[0]) <= 4


def test_same_seed_same_samples_and_different_seed_different_samples():
    model = small_model()
    prompts = [[1, 2], [3, 4, 5]]
    first = generate(model, prompts, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=123))
    assert generate(model, prompts, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=123)) == first
    assert generate(model, prompts, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=124)) != first


def test_zero_new_tokens_gives_empty_completions():
    assert generate(small_model(), [[1], [2, 3]], SamplingConfig(max_new_tokens=0)) == [[], []]


PROBS = torch.tensor([[0.125, 0.5, 0.125, 0.25]])


@pytest.mark.parametrize(
    "p,expected",
    [
        (0.4, [0, 1, 0, 0]),  # the top token alone already reaches p
        (0.7, [0, 2 / 3, 0, 1 / 3]),
        (0.75, [0, 2 / 3, 0, 1 / 3]),  # {0.5, 0.25} sums to exactly p: the smallest such set
        (0.8, [1 / 7, 4 / 7, 0, 2 / 7]),  # ties broken by sort order: one of the two 0.125s
        (1.0, [0.125, 0.5, 0.125, 0.25]),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    filtered = filter_top_p(PROBS, p)
    if p == 0.8:  # either 0.125 token may be the one kept
        assert sorted(filtered[0].tolist()) == pytest.approx(sorted(expected))
    else:
        torch.testing.assert_close(filtered, torch.tensor([expected], dtype=torch.float32))


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_top_p_equals_ranking_the_whole_vocabulary_for_narrow_and_wide_nuclei(p):
    """filter_top_p ranks only the first tokens when they hold p: rows whose nucleus is a few tokens and
    rows whose nucleus is wider than that first ranking (then the whole vocabulary is ranked), together."""
    generator = torch.Generator().manual_seed(0)
    vocab = 3 * NUCLEUS_FIRST_RANKS
    confident = torch.softmax(8 * torch.randn(3, vocab, generator=generator), dim=-1)
    flat = torch.softmax(0.1 * torch.randn(3, vocab, generator=generator), dim=-1)
    for probs in (confident, flat, torch.cat([confident, flat])):
        assert torch.equal(filter_top_p(probs, p), top_p_by_full_sort(probs, p))


def test_top_p_at_the_edge_of_the_first_ranks_keeps_what_ranking_everything_keeps():
    """p equal to the mass of the first NUCLEUS_FIRST_RANKS tokens: float rounding then decides whether the
    next token is kept, and the first ranks alone must not decide it differently from a full sort."""
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(100, 3 * NUCLEUS_FIRST_RANKS, generator=generator), dim=-1)
    edges = probs.topk(NUCLEUS_FIRST_RANKS, dim=-1).values.cumsum(dim=-1)[:, -1]
    for row, p in zip(probs, edges.tolist(), strict=True):
        assert torch.equal(filter_top_p(row[None], p), top_p_by_full_sort(row[None], p))


def test_top_p_over_equal_probabilities_keeps_as_many_as_ranking_everything():
    probs = torch.full((2, 3 * NUCLEUS_FIRST_RANKS), 1 / (3 * NUCLEUS_FIRST_RANKS))
    for p in (0.1, 0.5):  # within the first ranks, and beyond them
        kept = (filter_top_p(probs, p) > 0).sum(-1)
        assert torch.equal(kept, (top_p_by_full_sort(probs, p) > 0).sum(-1))


def test_top_k_keeps_the_k_most_probable():
    torch.testing.assert_close(filter_top_k(PROBS, 2), torch.tensor([[0, 2 / 3, 0, 1 / 3]]))
    torch.testing.assert_close(filter_top_k(PROBS, 10), PROBS)


def test_sampling_follows_the_temperature_scaled_distribution():
    logits = PROBS.log().repeat(20_000, 1)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next_token(logits, temperature=2.0, generator=generator), minlength=4)
    expected = PROBS[0].sqrt() / PROBS[0].sqrt().sum()  # softmax(log p / 2) ∝ √p
    torch.testing.assert_close(counts / counts.sum(), expected, atol=0.015, rtol=0)


def test_greedy_and_degenerate_filters_pick_the_argmax():
    logits = torch.randn(50, 64)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_token(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, top_k=1, generator=generator), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, top_p=1e-6, generator=generator), logits.argmax(-1))


@pytest.mark.parametrize(
    "prompts,message",
    [
        ([], "prompt_ids is empty"),
        ([[1], []], "prompt 1 is empty"),
        ([[1, 64]], "token id 64 outside the vocabulary 0..63"),
        ([[-1]], "token id -1 outside"),
    ],
)
def test_bad_prompts_are_refused_with_a_clear_message(prompts, message):
    with pytest.raises(UserError, match=message):
        generate(small_model(), prompts, SamplingConfig(max_new_tokens=4))


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"max_new_tokens": -1}, r"^max_new_tokens must be >= 0, got -1$"),
        ({"temperature": -0.5}, r"^temperature must be >= 0 \(0 = greedy\), got -0.5$"),
        ({"top_p": 0.0}, r"^top_p must be in \(0, 1\], got 0.0$"),
        ({"top_p": 1.5}, r"^top_p must be in \(0, 1\], got 1.5$"),
        ({"top_k": 0}, r"^top_k must be >= 1, got 0$"),
        ({"eos_id": -1}, r"^eos_id must be a token id >= 0, got -1$"),
        ({"window_slide": 0}, r"^window_slide must be >= 1, got 0$"),
        ({"dtype": "float16"}, r"^dtype must be one of float32, bfloat16, got 'float16'$"),
        ({"dtype": torch.bfloat16}, r"^dtype must be one of float32, bfloat16, got torch.bfloat16$"),
        ({"max_new_tokens": 2.5}, r"^max_new_tokens must be an integer, got 2.5$"),
        ({"top_k": True}, r"^top_k must be an integer, got True$"),
        ({"temperature": "0"}, r"^temperature must be a number, got '0'$"),
        ({"seed": 2**70}, rf"^seed must be an integer in \[0, {2**64 - 1}\], got {2**70}$"),
    ],
)
def test_each_bad_setting_is_one_error_that_names_it(settings, message):
    with pytest.raises(SamplingError, match=message):
        SamplingConfig(**settings)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"window_slide": 17}, r"^window_slide must be in 1\.\.16 \(the context length\), got 17$"),
        ({"eos_id": 64}, r"^eos_id must be a token id in 0\.\.63 \(the vocabulary\), got 64$"),
    ],
)
def test_settings_beyond_the_model_are_refused_before_sampling(settings, message):
    sampling = SamplingConfig(**settings)  # fine on its own: the model decides
    sampling.check(TransformerLM(**SMALL | {"context_length": 17, "vocab_size": 65}))
    with pytest.raises(SamplingError, match=message):
        next(generate_steps(small_model(), [[1]], sampling))


def test_more_tokens_than_the_memory_holds_are_refused_before_any_is_allocated():
    """(A max_new_tokens of 1e9 was an allocator error, or the process was killed.)"""
    with pytest.raises(SamplingError, match=r"^max_new_tokens=10{15} for 2 prompts needs about .* GiB"):
        next(generate_steps(small_model(), [[1], [2]], SamplingConfig(max_new_tokens=10**15)))


def test_the_settings_go_by_name_only():
    """A reordered setting cannot silently take another's place: SamplingConfig takes keywords only, and
    generate takes one SamplingConfig, not the loose settings of its former signature."""
    with pytest.raises(TypeError, match="positional"):
        SamplingConfig(50, 0.8)
    with pytest.raises(TypeError, match="the settings are one SamplingConfig"):
        generate(small_model(), [[1]], 50)
    with pytest.raises(TypeError, match="positional"):
        generate(small_model(), [[1]], SamplingConfig(), True)


def test_top_k_1_or_a_tiny_top_p_through_generate_is_greedy():
    """Each filter reaches the sampler as itself: top_k=1 and top_p=1e-6 keep only the argmax."""
    model = small_model().double()
    prompts = [[1, 2, 3], [4]]
    expected = generate(model, prompts, greedy(10))
    for settings in ({"top_k": 1}, {"top_p": 1e-6}):
        assert (
            generate(model, prompts, SamplingConfig(max_new_tokens=10, temperature=1.5, seed=3, **settings))
            == expected
        )


def test_next_token_logits_are_the_last_position_of_forward():
    model = small_model()
    ids = torch.randint(0, 64, (2, 11))
    torch.testing.assert_close(model.next_token_logits(ids), model(ids)[:, -1], atol=1e-5, rtol=1e-5)
    cache = KVCache.for_model(model, 2, torch.tensor([4, 0]))
    prefill = model.next_token_logits(ids, kv_cache=cache)
    step = model.next_token_logits(torch.tensor([[5], [7]]), kv_cache=cache)
    via_forward = KVCache.for_model(model, 2, torch.tensor([4, 0]))
    torch.testing.assert_close(prefill, model(ids, kv_cache=via_forward)[:, -1], atol=1e-5, rtol=1e-5)
    step_via_forward = model(torch.tensor([[5], [7]]), kv_cache=via_forward)[:, -1]
    torch.testing.assert_close(step, step_via_forward, atol=1e-5, rtol=1e-5)
