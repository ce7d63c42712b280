"""The tokenizer's C merge loop (lmproject/tokenizer/_merge.c). Everything else is in pyproject.toml.

optional=True: without a C compiler the install still succeeds and the tokenizer runs its Python loop.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("lmproject.tokenizer._merge", ["lmproject/tokenizer/_merge.c"], optional=True)])
