"""gpumgr: the model lifecycle daemon of one GPU host."""

__version__ = "0.1.0"
