"""Byte-level BPE: `train_bpe` learns a vocab and merges from a text file; `Tokenizer` encodes and decodes."""

from lmproject.tokenizer.tokenizer import EOS_TOKEN, Tokenizer
from lmproject.tokenizer.train import train_bpe

__all__ = ["EOS_TOKEN", "Tokenizer", "train_bpe"]
