"""Two figures docs/model.md quotes, on configs/smoke.yaml's model (vocab 512, context 64, d_model 64):

1. AdamW's ε placement. The project's AdamW adds ε to the raw √v (the CS336 handout); torch.optim.AdamW adds
   it to the bias-corrected √v̂. Both train copies of one model on the same batches (lr 1e-3 constant,
   betas (0.9, 0.95), weight decay 0.1) for `--steps` steps; printed: the largest parameter difference (and
   where) and the loss difference, at ε = 1e-8 and at ε = 1e-30, where placement no longer matters (what is
   left there is float rounding).
2. Tied embeddings' init. The loss at init and on 32 held-out windows after `--steps` steps of the smoke
   schedule (lr_max 3e-3 after 20 warmup steps, clipping at 1.0): untied, tied with the shared matrix
   initialized as the lm_head (what TransformerLM does), and tied with the embedding's σ = 1 (what it did).

The data are random windows of a noisy counter modulo the vocabulary: learnable, so the gradients are not
noise alone.

    .venv/bin/python bench/bench_numerics.py [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import math

import numpy as np
import torch

from lmproject.nn import TransformerLM, cross_entropy
from lmproject.training.data import get_batch
from lmproject.training.optim import AdamW, clip_grad_norm, cosine_lr

SMOKE = dict(vocab_size=512, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=176)


def batches(count: int, batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(0)
    tokens = (np.arange(100_000) + rng.integers(0, 2, 100_000)) % SMOKE["vocab_size"]
    return [get_batch(tokens, batch_size, SMOKE["context_length"], "cpu", rng) for _ in range(count)]


def train(model: TransformerLM, optimizer: torch.optim.Optimizer, data, schedule=None) -> float:
    """Train on `data` (lr from schedule(step) when given, clipping at 1.0 then); the first batch's loss."""
    first = math.nan
    for step, (x, y) in enumerate(data):
        if schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
        optimizer.zero_grad()
        loss = cross_entropy(model(x), y)
        if step == 0:
            first = loss.item()
        loss.backward()
        if schedule is not None:
            clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
    return first


def eps_placement(eps: float, steps: int) -> tuple[float, str, float]:
    """(max |θ_ours − θ_torch|, the parameter where it is, |loss difference| on the next batch)."""
    torch.manual_seed(0)
    ours = TransformerLM(**SMOKE)
    theirs = copy.deepcopy(ours)
    settings = dict(lr=1e-3, betas=(0.9, 0.95), eps=eps, weight_decay=0.1)
    *data, (x, y) = batches(steps + 1)
    train(ours, AdamW(ours.parameters(), **settings), data)
    train(theirs, torch.optim.AdamW(theirs.parameters(), **settings, foreach=False), data)
    gaps = {
        name: (a - b).abs().max().item()
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True)
    }
    where = max(gaps, key=gaps.get)
    with torch.no_grad():
        loss_gap = (cross_entropy(ours(x), y) - cross_entropy(theirs(x), y)).abs().item()
    return gaps[where], where, loss_gap


def tied_init(variant: str, steps: int) -> tuple[float, float]:
    """(loss of the first batch at init, held-out loss after `steps` steps)."""
    torch.manual_seed(0)
    model = TransformerLM(**SMOKE, tie_embeddings=variant != "untied")
    if variant == "tied, embedding init":
        torch.nn.init.trunc_normal_(model.token_embeddings.weight.data, std=1.0, a=-3.0, b=3.0)
    (held_x, held_y), *data = batches(steps + 1, batch_size=32)
    optimizer = AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    first = train(
        model, optimizer, [(x[:8], y[:8]) for x, y in data], lambda t: cosine_lr(t, 3e-3, 3e-4, 20, 200)
    )
    with torch.no_grad():
        return first, cross_entropy(model(held_x), held_y).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"AdamW after {args.steps} steps, ours against torch.optim.AdamW:")
    for eps in (1e-8, 1e-30):
        gap, where, loss_gap = eps_placement(eps, args.steps)
        print(f"  eps {eps:g}: max parameter difference {gap:.2e} ({where}), loss difference {loss_gap:.2e}")
    print(f"tied embeddings (ln vocab = {math.log(SMOKE['vocab_size']):.3f}):")
    for variant in ("untied", "tied, head init", "tied, embedding init"):
        first, last = tied_init(variant, args.steps)
        print(
            f"  {variant:<21} loss at init {first:7.3f}, held-out loss after {args.steps} steps {last:7.3f}"
        )


if __name__ == "__main__":
    main()
