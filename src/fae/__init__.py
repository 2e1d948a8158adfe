"""FAE: adapt a frozen pretrained visual encoder into a compact latent space for generation.

Layers (lower never imports higher): nn -> backbones -> autoencoder / generation -> data ->
training -> evaluation / pipeline / integrations -> cli.

``fae.FAEPipeline`` (labels or prompts -> images) is resolved on first access, so ``import fae``
(and ``fae --help``) loads no model code.
"""
import importlib
from typing import Any

__version__ = "0.1.0"

from fae.errors import FAEError  # noqa: F401,E402

# Public names served lazily: name -> the module that defines it.
_LAZY = {"FAEPipeline": "fae.pipeline", "FAEPipelineOutput": "fae.pipeline"}


def __getattr__(name: str) -> Any:
    """Import the module of a lazy public name on first access (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
