"""Two build steps beyond pyproject.toml: the tokenizer's C merge loop (lmproject/tokenizer/_merge.c), and the
repository's configs/ copied into the built package as lmproject/configs, so that `lmproject fit --config
tinystories.yaml` finds the shipped configs from any directory in an installed wheel (an editable install
reads configs/ itself: lmproject.lit.run_config.shipped_configs_dir).

optional=True: without a C compiler the install still succeeds and the tokenizer runs its Python loop.
"""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    """build_py, plus configs/ as package data built from the one copy in the repository."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "lmproject" / "configs"
            shutil.copytree("configs", target, dirs_exist_ok=True)


setup(
    ext_modules=[Extension("lmproject.tokenizer._merge", ["lmproject/tokenizer/_merge.c"], optional=True)],
    cmdclass={"build_py": BuildWithConfigs},
)
