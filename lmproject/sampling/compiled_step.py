"""A CPU generation step compiled once by torch.compile (inductor) and run for every token.

Run op by op, a one-token decode step of a small model spends much of its time outside the matrix products:
dozens of small ops per layer (norms, RoPE, attention, views), each a dispatched kernel with its own pass
over memory. With a static KV cache (lmproject.sampling.kv_cache) a one-token step has the same shapes at
every position, so one compiled graph serves the whole generation: inductor fuses the small ops, the
attention included (the model's from-scratch math), into a few C++ loops and, with the weights frozen as
constants, packs each weight for its own matrix-vector kernel. Compiling needs a C++ compiler and takes tens
of seconds of CPU time, once per model, batch size and dtype: worth it for long or many generations
(bench/RESULTS.md has the figures).
"""

from __future__ import annotations

import copy
import types
import weakref
from collections.abc import Callable

import torch
from torch._dynamo.eval_frame import reset_code
from torch._inductor import config as inductor_config
from torch._inductor import cpp_builder
from torch._inductor.exc import InvalidCxxCompiler

from lmproject.errors import UserError
from lmproject.nn import TransformerLM
from lmproject.sampling.kv_cache import KVCache

# The compiled steps of each model given to `generate` (before its conversion for decoding), by dtype and
# batch size, remade when that model's weights change in place (their version counters move).
_STEPS: weakref.WeakKeyDictionary[TransformerLM, dict[tuple, CompiledStep]] = weakref.WeakKeyDictionary()
# freezing: weights as constants, packed for inductor's own matrix-vector kernels (max_autotune: use them);
# cpp_wrapper: the graph's kernels are called from C++, not from Python. Set around the first call, which
# compiles: passed to torch.compile, `freezing` is not applied.
INDUCTOR_CONFIG = {
    "freezing": True,
    "max_autotune": True,
    "cpp_wrapper": True,
    "max_autotune_report_choices_stats": False,  # no JSON on stderr
}
# The dtypes of inductor's own kernels. At batch 1 they are the only choice (their matrix-vector products
# beat torch's on every weight here): nothing to benchmark, half the compile time. Batches (where torch's
# bf16 kernels win) and other dtypes let inductor benchmark both and pick.
OWN_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


class CompiledStep:
    """Callable: the new token of each row (batch,) -> next-token logits (batch, vocab). Owns its static
    KVCache (`cache`), which each generation resets to its prompts' padding and fills with the prompts
    (prefill, run op by op by `model`) before the first step. Compiled at the first call, with its own copy
    of the weights (`model`; they become constants of the compiled graph).

    Each step is compiled from its own copy of `_run`'s code: dynamo keeps graphs per code object, so the
    step's graph is the only one its guards check, and however many steps a process makes (models, batch
    sizes, dtypes), none runs uncompiled because others reached dynamo's recompile limit (8 graphs per
    code object)."""

    def __init__(self, model: TransformerLM, batch_size: int):
        device = model.lm_head.weight.device
        if device.type != "cpu":
            raise UserError(f"generate: compiled_step is for the CPU, not {device} (on CUDA: cuda_graph)")
        if cpp_compiler() is None:
            raise UserError(
                "generate: compiled_step needs a C++ compiler (torch.compile builds the step with g++ or "
                "the one in $CXX) and none was found; sample without it"
            )
        if model.attention != "math":  # the from-scratch math, which inductor fuses (torch's fused CPU
            raise ValueError("a compiled step runs a model built with attention='math'")  # kernel: slower)
        self.model = copy.deepcopy(model)
        self.cache = KVCache.for_model(self.model, batch_size, static=True)
        run = _own_code(self._run)
        self._step = torch.compile(run, dynamic=False)
        self.compiled = False
        # Dynamo keeps a code object's graphs (and so this step's weights, their constants) past the step:
        # dropped with it, or each model a process samples from would stay in memory
        weakref.finalize(self, reset_code, run.__func__.__code__)

    @classmethod
    def for_model(
        cls,
        source: TransformerLM,
        dtype: torch.dtype,
        decoding_form: Callable[[], TransformerLM],
        batch_size: int,
    ) -> CompiledStep:
        """The step of `source` in `dtype` for this batch size: compiled once per source model, dtype and
        batch size while the source's weights stay as they are, from `decoding_form()` (the model as
        generation runs it, generate.for_decoding), which is only made when a step is."""
        steps = _STEPS.setdefault(source, {})
        key, version = (dtype, batch_size), _weights_version(source)
        if key not in steps or steps[key].weights_version != version:
            steps[key] = cls(decoding_form(), batch_size)
            steps[key].weights_version = version
        return steps[key]

    def __call__(self, new: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        if cache.length >= cache.capacity:
            raise ValueError(f"KV cache overflow: {cache.length} cached + 1 new token > {cache.capacity}")
        if self.compiled:
            logits = self._step(new[:, None])
        else:
            own = self.model.lm_head.weight.dtype in OWN_KERNEL_DTYPES and len(self.cache.pad_lengths) == 1
            backends = {"max_autotune_gemm_backends": "CPP" if own else "CPP,ATEN"}
            with inductor_config.patch({**INDUCTOR_CONFIG, **backends}):  # costly per call: only to compile
                logits = self._step(new[:, None])
            self.compiled = True
        cache.length += 1  # KVCache.end leaves the Python counter to the caller under torch.compile
        return logits

    def _run(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.next_token_logits(tokens, kv_cache=self.cache)


def _own_code(method: Callable) -> Callable:
    """`method` bound to a function with a copy of its code object, so that torch.compile keeps the graphs
    compiled from it apart from every other instance's (dynamo caches graphs per code object)."""
    function = method.__func__
    copy_ = types.FunctionType(
        function.__code__.replace(), function.__globals__, function.__name__, function.__defaults__
    )
    return types.MethodType(copy_, method.__self__)


def _weights_version(model: TransformerLM) -> tuple[tuple[int, int], ...]:
    """Changes whenever a weight is replaced or modified in place (load_state_dict, an optimizer step).
    Inference tensors (made under torch.inference_mode, as `lmproject predict` makes its decoding copy)
    have no version counter: only their replacement shows."""
    return tuple(
        (param.data_ptr(), -1 if param.is_inference() else param._version) for param in model.parameters()
    )


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile builds with here, or None when there is none."""
    try:
        return cpp_builder.get_cpp_compiler()
    except InvalidCxxCompiler:
        return None
