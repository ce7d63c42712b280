"""Weights & Biases logging that works without an account: offline unless an API key is configured."""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


def wandb_api_key_configured() -> bool:
    """True when wandb could upload: WANDB_API_KEY is set or `wandb login` stored a key in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger; `offline: null` (the default) means offline exactly when no API key is
    configured, so `--config configs/wandb.yaml` never stops a run to ask for a login. Offline runs
    can be uploaded later with `wandb sync <save_dir>/wandb/offline-run-*`."""

    def __init__(
        self, project: str = "lmproject", offline: bool | None = None, save_dir: str = ".", **kwargs: Any
    ):
        offline = not wandb_api_key_configured() if offline is None else offline
        super().__init__(project=project, offline=offline, save_dir=save_dir, **kwargs)
