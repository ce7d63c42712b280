"""`python -m lmproject.tokenizer ...` is `lmproject-bpe ...`."""

from lmproject.tokenizer.cli import main

raise SystemExit(main())
