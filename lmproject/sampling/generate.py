"""Sampling text from a TransformerLM: temperature, top-k, nucleus (top-p), per-sequence EOS, KV cache.

How a batch runs. Prompts of different lengths are left-padded to a common width; the KVCache masks the
padding and numbers each prompt's real tokens from position 0, so every row is computed as if alone. The
prompts are encoded once (prefill), then each step feeds only the newly sampled token per row.

Sliding window. The model sees at most its context_length most recent tokens. A shifted window changes
every token's RoPE position (and what each token attended to), so cached keys cannot be reused: the window
is re-encoded from scratch. Doing that at every step would make each token past the context cost a whole
forward over the window, so the window moves `window_slide` tokens at a time: when a row's cache is full,
its last context_length - window_slide + 1 tokens are re-encoded, and the next window_slide - 1 steps
use the cache again. Each token past the context then sees between context_length - window_slide + 1 and
context_length tokens, always recomputed from the window's first token as a fresh sequence would be.
window_slide=1 is the exact one-token slide (every step past the context re-encodes the full window); the
default, a quarter of the context, costs about 1/window_slide of a re-encode per step. Each row slides on
its own schedule, as if it were alone in the batch: when one row's window moves, the rows whose windows
are not full keep their cache (their padding shrinks) and only that row is re-encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from lmproject.errors import UserError
from lmproject.nn import TransformerLM
from lmproject.nn.functional import softmax
from lmproject.precision import check_dtype
from lmproject.sampling.compiled_step import CompiledStep
from lmproject.sampling.config import SamplingConfig, SamplingError, memory_shortfall
from lmproject.sampling.cuda_graph import CUDAGraphStep
from lmproject.sampling.kv_cache import KVCache


def filter_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k most probable tokens of each row (..., vocab) and renormalize."""
    top = probs.topk(min(k, probs.shape[-1]), dim=-1).indices
    kept = torch.zeros_like(probs).scatter(-1, top, probs.gather(-1, top))
    return kept / kept.sum(dim=-1, keepdim=True)


# How many of the most probable tokens filter_top_p ranks first: a trained model's nucleus is usually far
# smaller, and ranking 1,024 of a 10K vocabulary (a partial top-k) costs under a tenth of sorting it all.
NUCLEUS_FIRST_RANKS = 1024
# How far beyond p the first ranks' mass must reach for them to decide alone: far above the rounding of a
# float32 sum up to 1, so that no token past them would be kept by a full sort either.
NUCLEUS_MARGIN = 1e-5


def filter_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens whose probabilities sum to at least p,
    and renormalize. A token is kept when the mass of the tokens ranked above it is still below p.

    Only the NUCLEUS_FIRST_RANKS most probable tokens are ranked when they hold p (and NUCLEUS_MARGIN) of
    every row, else the whole vocabulary: the nucleus a full sort gives (up to which of equally probable
    tokens at its edge is kept): much faster when it lies within those ranks, somewhat slower when it is
    wider, as for a model with random weights (bench/bench_sampling.py)."""
    top, order = probs.topk(min(NUCLEUS_FIRST_RANKS, probs.shape[-1]), dim=-1)  # most probable first
    cumulative = top.cumsum(dim=-1)
    first_ranks_hold_p = bool((cumulative[..., -1] >= p + NUCLEUS_MARGIN).all())
    if top.shape[-1] < probs.shape[-1] and not first_ranks_hold_p:  # a broad nucleus: rank them all
        top, order = probs.sort(dim=-1, descending=True)
        cumulative = top.cumsum(dim=-1)
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, cumulative - top < p)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def window_slide_for(context_length: int, window_slide: int | None) -> int:
    """The slide `generate` uses: window_slide, or by default a quarter of the context (at least 1)."""
    return max(1, context_length // 4) if window_slide is None else window_slide


def for_decoding(model: TransformerLM, dtype: torch.dtype | None = None) -> TransformerLM:
    """The model as generation runs it: its weights in `dtype` (default: as they are), and with the
    from-scratch attention (attention="math") in bfloat16 on the CPU, where torch's fused kernel is slower
    for a batch of one-query rows (bench/bench_generate.py). Returns the model itself when it already is in
    that form, else a new model with the same architecture and the converted weights: the caller's model
    stays as it was."""
    device = model.lm_head.weight.device
    dtype = model.lm_head.weight.dtype if dtype is None else dtype
    check_dtype(dtype, device, "generate: dtype")
    attention = "math" if device.type == "cpu" and dtype == torch.bfloat16 else model.attention
    return model.converted(dtype=dtype, attention=attention)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of logits (batch, vocab): greedy when temperature is 0, else sampled from
    softmax(logits / temperature) after the optional top-k and then top-p filters."""
    if temperature == 0:
        return logits.float().argmax(dim=-1)  # the same token; torch's argmax is slower over bf16
    probs = softmax(logits.float() / temperature, dim=-1)
    if top_k is not None:
        probs = filter_top_k(probs, top_k)
    if top_p < 1.0:
        probs = filter_top_p(probs, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()  # as a decorator it also restores the caller's grad mode at every yield
def generate_steps(
    model: TransformerLM,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    cuda_graph: bool = False,
    compiled_step: bool = False,
) -> Iterator[list[int | None]]:
    """The streaming form of `generate`: yield, at each step, the new token of every prompt (None for a
    prompt that already ended), e.g. `for (token,) in generate_steps(model, [prompt], sampling)` to print
    one completion as it is sampled. A prompt ends after it samples sampling.eos_id (that token is yielded)
    or after sampling.max_new_tokens steps.

    cuda_graph: on CUDA, replay one captured decode step per token instead of launching its ~100 kernels
        from Python (lmproject/sampling/cuda_graph.py).
    compiled_step: on the CPU, run each token through one decode step compiled by torch.compile
        (lmproject/sampling/compiled_step.py): faster per token, but the first call for a model, dtype and
        batch size compiles for about 30 s of CPU time. One generation at a time per model and batch size (the
        compiled step owns its cache).
    """
    if not isinstance(sampling, SamplingConfig):  # e.g. the max_new_tokens of the older signature
        raise TypeError(
            f"generate: the settings are one SamplingConfig, e.g. SamplingConfig(max_new_tokens=50), "
            f"not {type(sampling).__name__}"
        )
    _check_prompts(model, prompt_ids)
    sampling.check(model)
    window_slide = window_slide_for(model.config.context_length, sampling.window_slide)
    max_new_tokens, eos_id = sampling.max_new_tokens, sampling.eos_id
    if cuda_graph and compiled_step:
        raise UserError("generate: choose one of cuda_graph (CUDA) and compiled_step (CPU), not both")
    source, dtype = model, sampling.torch_dtype or model.lm_head.weight.dtype
    check_dtype(dtype, model.lm_head.weight.device, "generate: dtype")
    if max_new_tokens == 0:
        return
    positions = max(len(prompt) for prompt in prompt_ids) + max_new_tokens
    shortfall = memory_shortfall(model.config, len(prompt_ids), positions, dtype, model.lm_head.weight.device)
    if shortfall:
        raise SamplingError(f"max_new_tokens={max_new_tokens} for {len(prompt_ids)} prompts {shortfall}")
    compiled = None
    if compiled_step:  # its own decoding copy prefills too: none is made per call
        compiled = CompiledStep.for_model(
            source, dtype, lambda: source.converted(dtype=dtype, attention="math"), len(prompt_ids)
        )
        model = compiled.model
    else:
        model = for_decoding(source, dtype)
    keep = model.config.context_length - window_slide + 1  # tokens re-encoded when a row's window is full
    device = model.lm_head.weight.device
    generator = None if sampling.seed is None else torch.Generator(device=device).manual_seed(sampling.seed)
    width = max(len(prompt) for prompt in prompt_ids)
    # Every row's tokens so far, left-padded; `tokens` is the view of the columns the windows hold.
    history = torch.zeros(len(prompt_ids), width + max_new_tokens, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompt_ids):
        history[row, width - len(prompt) : width] = torch.tensor(prompt, dtype=torch.long)
    pad = torch.tensor([width - len(prompt) for prompt in prompt_ids], device=device)
    finished = [False] * len(prompt_ids)

    tokens, pad, _ = _crop_windows(model, history[:, :width], pad, keep=model.config.context_length)
    cache, step_logits = _decode_step(model, pad, cuda_graph, compiled)
    logits = model.next_token_logits(tokens, kv_cache=cache)
    for step in range(max_new_tokens):
        new = sample_next_token(logits, sampling.temperature, sampling.top_p, sampling.top_k, generator)
        new_ids = new.tolist()
        yield [None if done else token for done, token in zip(finished, new_ids, strict=True)]
        if eos_id is not None:
            finished = [done or token == eos_id for done, token in zip(finished, new_ids, strict=True)]
        if all(finished) or step == max_new_tokens - 1:
            return
        end = width + step + 1
        history[:, end - 1] = new
        tokens = history[:, end - tokens.shape[1] - 1 : end]
        if cache.length < model.config.context_length:
            logits = step_logits(new)
        else:
            tokens, pad, logits = _slide_windows(model, cache, tokens, pad, keep)


def generate(
    model: TransformerLM,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    *,
    cuda_graph: bool = False,
    compiled_step: bool = False,
) -> list[list[int]]:
    """The new tokens of each prompt (a batch of prompts of any lengths), sampled as `sampling` says, e.g.
    `generate(model, prompts, SamplingConfig(max_new_tokens=50, temperature=0))`. A completion that stops
    at sampling.eos_id ends with it (the EOS token is included); otherwise it has max_new_tokens tokens."""
    completions: list[list[int]] = [[] for _ in prompt_ids]
    steps = generate_steps(model, prompt_ids, sampling, cuda_graph=cuda_graph, compiled_step=compiled_step)
    for step_tokens in steps:
        for completion, token in zip(completions, step_tokens, strict=True):
            if token is not None:
                completion.append(token)
    return completions


def _crop_windows(
    model: TransformerLM, tokens: torch.Tensor, pad: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of the left-padded batch keeps its last `keep` tokens if it outgrew the context, else all
    of them; columns beyond a row's kept tokens become its padding. Returns (tokens, padding, which rows
    outgrew the context)."""
    real = tokens.shape[1] - pad
    full = real > model.config.context_length
    kept = torch.where(full, keep, real)
    width = int(kept.max())
    return tokens[:, -width:], width - kept, full


def _decode_step(
    model: TransformerLM, pad: torch.Tensor, cuda_graph: bool, compiled: CompiledStep | None
) -> tuple[KVCache, Callable[[torch.Tensor], torch.Tensor]]:
    """The cache for a batch with padding `pad` and the one-token step of `model` that extends it: the
    compiled step (with its own cache) when there is one, else replayed as a CUDA graph, or run op by op."""
    if compiled is not None:
        compiled.cache.reset(pad)
        return compiled.cache, compiled
    cache = KVCache.for_model(model, len(pad), pad, static=cuda_graph)
    return cache, CUDAGraphStep(model, cache) if cuda_graph else _eager_step(model, cache)


def _eager_step(model: TransformerLM, cache: KVCache) -> Callable[[torch.Tensor], torch.Tensor]:
    """One decode step run op by op: the new token of each row (batch,) -> next-token logits."""
    return lambda new: model.next_token_logits(new[:, None], kv_cache=cache)


def _slide_windows(
    model: TransformerLM, cache: KVCache, tokens: torch.Tensor, pad: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step after the cache filled up, `tokens` holding the new tokens: each row whose sequence now
    exceeds the context re-encodes its last `keep` tokens; a row that still fits (its windows fill at
    other steps) keeps its cached keys and values and only runs its new token, as it would alone.
    The cache keeps its buffers (a captured CUDA graph reads them)."""
    tokens, pad, full = _crop_windows(model, tokens, pad, keep)
    if bool(full.all()):
        cache.reset(pad)
        return tokens, pad, model.next_token_logits(tokens, kv_cache=cache)
    cache.drop_oldest(cache.length - (tokens.shape[1] - 1), pad)
    logits = model.next_token_logits(tokens[:, -1:], kv_cache=cache)  # the full rows' results are replaced
    rows = full.nonzero().squeeze(1)
    window = KVCache.for_model(model, len(rows), pad[rows])
    logits[rows] = model.next_token_logits(tokens[rows], kv_cache=window)
    cache.replace_rows(rows, window)
    return tokens, pad, logits


def _check_prompts(model: TransformerLM, prompt_ids: Sequence[Sequence[int]]) -> None:
    """Refuse an empty batch, an empty prompt, or a token id outside the model's vocabulary."""
    if len(prompt_ids) == 0:
        raise UserError("generate: prompt_ids is empty (give at least one prompt)")
    for i, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            raise UserError(f"generate: prompt {i} is empty (it needs at least one token)")
        bad = [t for t in prompt if not 0 <= t < model.config.vocab_size]
        if bad:
            raise UserError(
                f"generate: prompt {i} has token id {bad[0]} outside the vocabulary "
                f"0..{model.config.vocab_size - 1}"
            )
