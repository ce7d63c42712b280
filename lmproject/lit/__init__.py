"""The Lightning layer, the only part of lmproject that imports lightning: the LightningModule around
lmproject.nn.TransformerLM and the project's optimizers (module.py), the data module over
lmproject.training.data (datamodule.py), callbacks, checkpoint I/O, loggers, sampling through `predict`,
FSDP, and the LightningCLI that drives them (cli.py). Every private Lightning attribute used is behind
compat.py."""
