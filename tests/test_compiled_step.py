"""generate(..., compiled_step=True): the tokens of the op-by-op path, one compilation per model and batch
size, recompiled when the weights change, clear errors where it cannot run."""

import subprocess
import sys

import pytest
import torch
from reference_model import single_thread
from torch._dynamo.utils import counters

from lmproject.errors import UserError
from lmproject.nn import TransformerLM
from lmproject.sampling import compiled_step as compiled_step_module
from lmproject.sampling.config import SamplingConfig
from lmproject.sampling.generate import generate

SMALL = dict(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48)
PROMPTS = [[5], [1, 2, 3, 4, 5, 6, 7], list(range(20, 40))]  # windows slide, alone and all together

needs_compiler = pytest.mark.skipif(
    compiled_step_module.cpp_compiler() is None, reason="no C++ compiler for torch.compile"
)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def small_model(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(**SMALL).double()  # float64: no near-ties flip an argmax


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@needs_compiler
@pytest.mark.slow
def test_compiled_steps_give_the_eager_tokens_and_compile_once():
    model = small_model()
    greedy = SamplingConfig(max_new_tokens=30, temperature=0, window_slide=3)
    seeded = SamplingConfig(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=1)
    before = compiled_graphs()
    assert generate(model, PROMPTS, greedy, compiled_step=True) == generate(model, PROMPTS, greedy)
    assert generate(model, PROMPTS, seeded, compiled_step=True) == generate(model, PROMPTS, seeded)
    assert compiled_graphs() == before + 1  # one graph for every position, both calls


@needs_compiler
@pytest.mark.slow
def test_a_compiled_step_follows_weights_changed_in_place():
    """The compiled graph holds the weights as constants: a model whose weights changed (a checkpoint
    loaded into it) gets a new step instead of the old weights' tokens."""
    model, other = small_model(0), small_model(1)
    greedy = SamplingConfig(max_new_tokens=12, temperature=0)
    first = generate(model, PROMPTS[:1], greedy, compiled_step=True)
    model.load_state_dict(other.state_dict())
    changed = generate(model, PROMPTS[:1], greedy, compiled_step=True)
    assert changed == generate(other, PROMPTS[:1], greedy) != first


@needs_compiler
@pytest.mark.slow
def test_steps_of_two_models_and_batch_sizes_in_turn_each_run_their_own_graph():
    """Each step runs its own graph (its model's weights, its batch size) when others were compiled since,
    and every step is compiled, however many there are (dynamo's recompile limit counts graphs per code
    object)."""
    models = [small_model(0), small_model(1)]
    greedy = SamplingConfig(max_new_tokens=8, temperature=0)
    before = compiled_graphs()
    with torch._dynamo.config.patch(recompile_limit=1):
        for prompts in (PROMPTS[:1], PROMPTS, PROMPTS[:1]):
            for model in models:
                compiled = generate(model, prompts, greedy, compiled_step=True)
                assert compiled == generate(model, prompts, greedy)
    assert compiled_graphs() == before + 4  # 2 models x 2 batch sizes


@needs_compiler
@pytest.mark.slow
def test_a_compiled_step_serves_a_later_call_under_inference_mode():
    """`lmproject predict` samples under torch.inference_mode; a step compiled outside it still serves it
    (a recompilation for the new mode, not an error) and gives the same tokens."""
    model = small_model()
    greedy = SamplingConfig(max_new_tokens=6, temperature=0)
    outside = generate(model, PROMPTS[:1], greedy, compiled_step=True)
    with torch.inference_mode():
        assert generate(model, PROMPTS[:1], greedy, compiled_step=True) == outside


DROP_A_MODEL = """
import gc, weakref
import torch
from lmproject.sampling import compiled_step
from lmproject.sampling.config import SamplingConfig
from lmproject.sampling.generate import generate
from lmproject.nn import TransformerLM

torch.set_num_threads(1)
model = TransformerLM(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48)
generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=3, temperature=0), compiled_step=True)
(step,) = compiled_step._STEPS[model].values()
weight = weakref.ref(step.model.lm_head.weight)
del model, step
gc.collect()  # the step, whose finalizer lets go of its graph; then the graph's own cycles
gc.collect()
print("freed" if weight() is None else "kept")
"""


@needs_compiler
@pytest.mark.slow
def test_a_dropped_model_takes_its_compiled_step_and_weights_with_it():
    """The compiled graph holds the step's weights: once the model is gone, they must go too (a process
    that samples from many models, or from one after each checkpoint, would grow without end). In a fresh
    interpreter: pytest's own bookkeeping keeps compiled graphs alive."""
    done = subprocess.run([sys.executable, "-c", DROP_A_MODEL], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "freed"


def test_without_a_cpp_compiler_the_compiled_step_is_refused(monkeypatch):
    monkeypatch.setattr(compiled_step_module, "cpp_compiler", lambda: None)
    with pytest.raises(UserError, match="compiled_step needs a C\\+\\+ compiler"):
        generate(small_model(), [[1, 2]], SamplingConfig(max_new_tokens=3), compiled_step=True)


def test_cuda_graph_and_compiled_step_together_are_refused():
    sampling = SamplingConfig(max_new_tokens=3)
    with pytest.raises(UserError, match="one of cuda_graph .* and compiled_step"):
        generate(small_model(), [[1, 2]], sampling, cuda_graph=True, compiled_step=True)
