"""Every numeric and choice setting of a run, with the rule it must follow, checked before any work.

One table per config section. A rule is (setting, test, requirement): `test(value, section)` gets the value
and the whole section, so a rule can relate settings (lr_min <= lr_max, num_heads dividing d_model); the
requirement is what the error says, formatted with the section's values. A new hyperparameter needs one line
here. `lmproject fit/validate/test/predict`, `lmproject accounting --config`, LanguageModel, TokenDataModule
and ModelConfig all call `check_settings`, so a value is refused the same way wherever it comes from.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from lmproject.errors import UserError

NORMS = ("pre", "post", "none")
POSITIONS = ("rope", "none")
FFNS = ("swiglu", "silu", "relu2")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
ATTENTIONS = ("fused", "math")
TOKEN_DTYPES = ("uint16", "uint32")
COMPILE_MODES = (
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)  # torch.compile's
MAX_SEED = 2**32 - 1  # numpy's generators take seeds in [0, 2**32)


class SettingError(UserError, ValueError):
    """A setting outside its allowed range: a UserError for the CLI, a ValueError for Python callers."""


class Rule(NamedTuple):
    name: str
    test: Callable[[Any, Mapping[str, Any]], bool]
    requirement: str


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _head_size(section: Mapping[str, Any]) -> int:
    return section["d_model"] // section["num_heads"]


ARCH_RULES = (  # lmproject.nn.ModelConfig's fields
    Rule("vocab_size", lambda v, s: _count(v), "an integer >= 1"),
    Rule("context_length", lambda v, s: _count(v), "an integer >= 1"),
    Rule("d_model", lambda v, s: _count(v), "an integer >= 1"),
    Rule("num_layers", lambda v, s: _count(v), "an integer >= 1"),
    Rule("num_heads", lambda v, s: _count(v), "an integer >= 1"),
    Rule("num_heads", lambda v, s: s["d_model"] % v == 0, "a divisor of d_model={d_model}"),
    Rule(
        "num_heads",
        lambda v, s: s.get("position", "rope") != "rope" or _head_size(s) % 2 == 0,
        "a divisor of d_model={d_model} with an even quotient: RoPE rotates pairs of a head's dimensions",
    ),
    Rule("d_ff", lambda v, s: _count(v), "an integer >= 1"),
    Rule("rope_theta", lambda v, s: _real(v) and v > 0, "a number > 0"),
    Rule("norm", lambda v, s: v in NORMS, f"one of {', '.join(NORMS)}"),
    Rule("position", lambda v, s: v in POSITIONS, f"one of {', '.join(POSITIONS)}"),
    Rule("ffn", lambda v, s: v in FFNS, f"one of {', '.join(FFNS)}"),
    Rule("tie_embeddings", lambda v, s: isinstance(v, bool), "true or false"),
    Rule("qk_norm", lambda v, s: isinstance(v, bool), "true or false"),
    Rule("logit_softcap", lambda v, s: v is None or (_real(v) and v > 0), "null or a number > 0"),
)

MODEL_RULES = (  # LanguageModel's settings besides the architecture (model.arch)
    Rule("attention", lambda v, s: v in ATTENTIONS, f"one of {', '.join(ATTENTIONS)}"),
    Rule("optimizer", lambda v, s: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    Rule("muon_momentum", lambda v, s: _real(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("schedule", lambda v, s: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    Rule("wsd_decay_fraction", lambda v, s: _real(v) and 0 < v <= 1, "a number in (0, 1]"),
    Rule("lr_max", lambda v, s: _real(v) and v > 0, "a number > 0"),
    Rule("lr_min", lambda v, s: _real(v) and 0 <= v <= s["lr_max"], "in [0, lr_max={lr_max}]"),
    Rule("warmup_iters", lambda v, s: _natural(v), "an integer >= 0"),
    Rule(
        "cosine_cycle_iters",
        lambda v, s: v is None or (_count(v) and v >= s["warmup_iters"]),
        "null or an integer >= 1 and >= warmup_iters={warmup_iters}",
    ),
    Rule(
        "betas", lambda v, s: len(v) == 2 and all(_real(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"
    ),
    Rule("eps", lambda v, s: _real(v) and v > 0, "a number > 0"),
    Rule("weight_decay", lambda v, s: _real(v) and v >= 0, "a number >= 0"),
    Rule("max_grad_norm", lambda v, s: v is None or (_real(v) and v > 0), "null or a number > 0"),
    Rule(
        "compile_mode",
        lambda v, s: v is None or v in COMPILE_MODES,
        f"null or one of {', '.join(COMPILE_MODES)}",
    ),
    Rule("loss_chunk_tokens", lambda v, s: v is None or _count(v), "null or an integer >= 1"),
    Rule(
        "loss_chunk_tokens",
        lambda v, s: v is None or s["arch"]["logit_softcap"] is None,
        "null when model.arch.logit_softcap={arch[logit_softcap]} is set: the chunked loss has no soft-cap",
    ),
)

DATA_RULES = (
    Rule("batch_size", lambda v, s: _count(v), "an integer >= 1"),
    Rule("val_windows", lambda v, s: _count(v), "an integer >= 1"),
    Rule("val_batch_size", lambda v, s: v is None or _count(v), "null or an integer >= 1"),
    Rule("num_workers", lambda v, s: _natural(v), "an integer >= 0"),
    Rule("seed", lambda v, s: _natural(v) and v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    Rule("dtype", lambda v, s: v is None or v in TOKEN_DTYPES, f"null or one of {', '.join(TOKEN_DTYPES)}"),
)

TRAINER_RULES = (  # the Trainer settings that Lightning would let through to a traceback or a silent no-op
    Rule("max_steps", lambda v, s: v == -1 or _count(v), "-1 (set by train_tokens) or an integer >= 1"),
    Rule("accumulate_grad_batches", lambda v, s: _count(v), "an integer >= 1"),
    Rule("val_check_interval", lambda v, s: not _real(v) or v > 0, "> 0 (steps) or a duration"),
    Rule("log_every_n_steps", lambda v, s: v is None or _count(v), "an integer >= 1 (0 logs no row)"),
    Rule("max_epochs", lambda v, s: v is None or v == -1 or _count(v), "-1 (no limit) or an integer >= 1"),
    Rule(
        "limit_train_batches",
        lambda v, s: v is None or (_count(v) if isinstance(v, int) else _real(v) and 0 < v <= 1),
        "null, an integer >= 1 or a fraction in (0, 1]: 0 would train nothing",
    ),
    Rule("gradient_clip_val", lambda v, s: v is None, "null: clipping is model.max_grad_norm"),
)

THROUGHPUT_RULES = (
    Rule("peak_flops", lambda v, s: v is None or (_real(v) and v > 0), "null or a number > 0"),
)

RUN_RULES = (  # top-level settings of `lmproject fit ...`
    Rule("train_tokens", lambda v, s: v is None or _count(v), "null or an integer >= 1"),
    Rule(
        "seed_everything",
        lambda v, s: isinstance(v, bool) or (_natural(v) and v <= MAX_SEED),
        f"true, false or an integer in [0, {MAX_SEED}]",
    ),
)

RULES = {
    "model.arch": ARCH_RULES,
    "model": MODEL_RULES,
    "data": DATA_RULES,
    "trainer": TRAINER_RULES,
    "throughput": THROUGHPUT_RULES,
    "": RUN_RULES,
}


def check_settings(section: str, values: Mapping[str, Any]) -> None:
    """Raise SettingError for the first setting of `values` (a config section named as in RULES, "" for
    the top level) that breaks its rule, e.g. `model.arch.num_heads=4: must be a divisor of d_model=66`.
    Settings absent from `values` are skipped (a partial section checks what it has)."""
    prefix = f"{section}." if section else ""
    for name, test, requirement in RULES[section]:
        if name not in values:
            continue
        value = values[name]
        try:
            ok = bool(test(value, values))
        except KeyError:  # a related setting is absent (a partial section): nothing to compare with
            continue
        except (TypeError, ZeroDivisionError):  # a wrong type
            ok = False
        if not ok:
            shown = list(value) if isinstance(value, tuple) else value
            raise SettingError(f"{prefix}{name}={shown!r}: must be {requirement.format(**values)}")


def closest_key(key: str, valid_keys: list[str]) -> str | None:
    """The valid key a mistyped or misplaced `key` most likely means: one with the same last name
    (model.d_model -> model.arch.d_model; the same first section preferred), else the closest spelling."""
    last = key.rsplit(".", 1)[-1]
    same_name = [valid for valid in valid_keys if valid.rsplit(".", 1)[-1] == last]
    if same_name:
        return min(same_name, key=lambda valid: (valid.split(".")[0] != key.split(".")[0], len(valid)))
    close = difflib.get_close_matches(key, valid_keys, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(key: str, valid_keys: list[str]) -> str:
    """` (did you mean --KEY?)` for the closest valid key, or "" when none is close."""
    suggestion = closest_key(key, valid_keys)
    return f" (did you mean --{suggestion}?)" if suggestion else ""
