"""Optional dependencies, imported only by the commands that need them.

``pip install similarity-client`` brings httpx and tqdm only; ``nearest`` and ``compare``
need the ``[eval]`` extra (numpy, scipy, faiss-cpu, and prdc / vendi-score, the reference
implementations the metrics are checked against), Parquet lists need ``[parquet]``
(pyarrow). A missing one is a :class:`MissingExtra` naming the extra to install, never an
ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA_OF = {"numpy": "eval", "scipy": "eval", "faiss": "eval", "prdc": "eval",
            "vendi_score": "eval", "pyarrow": "parquet"}
_PIP_NAME = {"faiss": "faiss-cpu", "vendi_score": "vendi-score"}


class MissingExtra(Exception):
    """A module of an optional extra is not installed (the message says what to install)."""

    def __init__(self, module: str, purpose: str) -> None:
        extra = EXTRA_OF.get(module.split(".")[0], "eval")
        package = _PIP_NAME.get(module.split(".")[0], module.split(".")[0])
        super().__init__(
            f"{purpose} needs {package}, which comes with the '{extra}' extra: "
            f"pip install 'similarity-client[{extra}]'")
        self.extra = extra
        self.module = module


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or :class:`MissingExtra` saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(module, purpose) from None
