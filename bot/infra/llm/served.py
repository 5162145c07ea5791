"""Which name a serving engine knows a model by (the ``model`` of a chat-completions request).

A registry version is exported as ``<version dir>/model`` (the merged folder, the version's
``model_ref``) beside ``<version dir>/adapter`` (its LoRA adapter; see ``training/export.py``).
An engine can serve a version in three ways, and :func:`served_model_name` picks the name:

* **runtime LoRA** (``CHATMAN_LLM_LORA_ADAPTERS``, vLLM with ``--enable-lora``): the adapter is
  loaded into the engine under the version's name, on top of the base;
* **a name of its own** (``CHATMAN_LLM_SERVED_VERSIONS``): the operator started the engine with
  that version under that name (``vllm serve <dir>/model --served-model-name …``);
* **its folder**: engines that load models on demand (``transformers serve`` without a forced
  model) take the folder's path as the name and report that same path as the model's id.

The base (no version) is ``CHATMAN_LLM_SERVED_MODEL`` or, by default, the folder (or hub id)
``CHATMAN_LLM_MODEL`` resolves to, as ``vllm serve <that>`` names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.infra.llm.source import resolve_llm


@dataclass(frozen=True)
class ServedNames:
    """How the engine names what it serves (from the CHATMAN_LLM_* settings)."""

    cache_dir: Path
    served_model: str | None = None  # the base's name; None: its resolved folder or hub id
    served_versions: Mapping[str, str] = field(default_factory=dict)  # version → name
    lora_adapters: bool = False


def served_model_name(model_ref: str, version: str | None, names: ServedNames) -> str:
    """The engine's name for ``model_ref`` answering as ``version`` (None: the base)."""
    if version is not None and version in names.served_versions:
        # An explicit name wins: the operator said how the engine knows this version.
        return names.served_versions[version]
    if version is not None and names.lora_adapters:
        return version
    if version is None:
        if names.served_model:
            return names.served_model
        # Resolved as the in-process backend would load it: a local folder's absolute path
        # (the starter's de-quantised cache folder), or the hub id as it is.
        return resolve_llm(model_ref, names.cache_dir).load_from
    return str(Path(model_ref).expanduser().resolve())


def adapter_dir(model_ref: str) -> Path:
    """A registry version's LoRA adapter, saved beside its merged ``model`` folder."""
    return Path(model_ref).expanduser().resolve().parent / "adapter"
