"""Choosing where a model runs: CUDA when present and asked for, CPU otherwise."""

from __future__ import annotations

from functools import cache


@cache
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return bool(torch.cuda.is_available())


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if cuda_available() else "cpu"
    return setting
