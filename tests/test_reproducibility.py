"""With `--trainer.deterministic true`, Ctrl-C then resume is bit-identical to an uninterrupted run at
torch's default thread count too (test_cli pins one thread, where it holds without the flag)."""

import pytest
import torch
from tiny_fit import BATCH, TINY_ARCH, SigintAt, train_losses, write_config, write_tokens

from lmproject.lit.commands import main


@pytest.fixture
def default_threads():
    """torch's default thread count (one per core, at least two so threads can race)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_deterministic_ctrl_c_and_resume_is_bit_identical_with_several_threads(tmp_path, default_threads):
    write_tokens(tmp_path)
    steps = 4
    args = [
        "--train_tokens",
        str(steps * BATCH * TINY_ARCH["context_length"]),
        "--trainer.deterministic",
        "true",
    ]
    straight = tmp_path / "straight"
    main(["fit", "--config", str(write_config(tmp_path, straight)), *args])
    resumed = tmp_path / "resumed"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(write_config(tmp_path, resumed, callbacks=[(SigintAt, {"step": 2})])),
                *args,
            ]
        )
    assert exit_info.value.code == 130
    main(["fit", "--config", str(write_config(tmp_path, resumed)), *args, "--ckpt_path", "last"])
    assert train_losses(resumed) == train_losses(straight)  # every logged loss, bit for bit
    weights = [
        torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
        for run in (straight, resumed)
    ]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
