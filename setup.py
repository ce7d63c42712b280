"""The C extensions: the tokenizer's merge loop (lmproject/tokenizer/_merge.c) and decoding's panel matrix
products (lmproject/nn/_panels.c). Everything else is in pyproject.toml.

optional=True: without a C compiler the install still succeeds; the tokenizer runs its Python loop and
decoding its torch products.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("lmproject.tokenizer._merge", ["lmproject/tokenizer/_merge.c"], optional=True),
        Extension("lmproject.nn._panels", ["lmproject/nn/_panels.c"], optional=True),
    ]
)
