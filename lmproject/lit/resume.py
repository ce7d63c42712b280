"""What a resumed run may change: Lightning restores a checkpoint's model settings over the config's, which
silently dropped `fit --ckpt_path last --model.lr_max 0.5`; lmproject.lit.cli puts back the settings that
may change and refuses the others."""

from __future__ import annotations

import sys
from typing import Any

from lmproject.errors import UserError

# The model settings a resumed run may change: its schedule, clipping, and how it runs (not what it
# computes). The others (optimizer, its betas/eps/weight decay/momentum, kept in the optimizer state) may not;
# the architecture is compared with the checkpoint's by check_checkpoint; zero_init only initializes.
CHANGEABLE_ON_RESUME = (
    "lr_max", "lr_min", "warmup_iters", "cosine_cycle_iters", "schedule", "wsd_decay_fraction",
    "max_grad_norm", "attention", "compile", "compile_mode", "loss_chunk_tokens", "activation_checkpointing",
)  # fmt: skip
FIXED_ON_RESUME = ("optimizer", "muon_momentum", "betas", "eps", "weight_decay")


def settings_kept_on_resume(
    configured: dict[str, Any], saved: dict[str, Any], refuse: bool
) -> dict[str, Any]:
    """The model settings of this run's config that differ from the checkpoint's and apply to the resumed
    run (each named in one line on stderr). With `refuse` (fit), a difference in a setting that cannot change
    on a resume is a UserError rather than silently replaced by the checkpoint's."""

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    differ = [name for name in saved if name in configured and plain(configured[name]) != plain(saved[name])]
    fixed = [name for name in differ if name in FIXED_ON_RESUME]
    if fixed and refuse:
        name = fixed[0]
        raise UserError(
            f"--model.{name}={plain(configured[name])!r} differs from the checkpoint's "
            f"{plain(saved[name])!r}, and it cannot change on a resume (the optimizer state depends on it): "
            "resume with the checkpoint's value, or start a new run (another --trainer.default_root_dir)"
        )
    kept = {name: configured[name] for name in differ if name in CHANGEABLE_ON_RESUME}
    for name, value in kept.items():
        print(f"lmproject: model.{name}={plain(value)!r} (the checkpoint's run had {plain(saved[name])!r})",
              file=sys.stderr)  # fmt: skip
    return kept
