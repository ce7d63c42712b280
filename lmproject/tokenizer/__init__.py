"""Byte-level BPE: `train_bpe` learns a vocab and merges from a text file; `Tokenizer` encodes and decodes."""

from lmproject.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer", "train_bpe"]


def __getattr__(name: str):
    # The trainer is imported on first use, so that encoding does not pay for (or depend on) it.
    if name == "train_bpe":
        from lmproject.tokenizer.train import train_bpe

        return train_bpe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
