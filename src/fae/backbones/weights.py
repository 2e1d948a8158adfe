"""Where a backbone's weights come from, in order of precedence.

1. ``weights=`` passed to :func:`fae.backbones.load_backbone` (a local folder / file, or a hub id);
2. ``$FAE_WEIGHTS_<NAME>``: the registry name upper-cased with non-alphanumerics as ``_``
   (``dinov2-g14`` -> ``FAE_WEIGHTS_DINOV2_G14``), pointing at a local folder / file;
3. ``$FAE_WEIGHTS_DIR/<name>`` when that folder exists (one folder holding many backbones);
4. the registry's hub id (Hugging Face cache first; the network only when online).

A path that does not exist is an error here, never a silent fall-through to the hub.

``weights="random"`` (:data:`RANDOM_WEIGHTS`) builds a registry network from its architecture alone,
randomly initialised: for ``fae plan``, the full-shape rehearsal (``bench/rehearse.py``) and the
GPU check, which measure costs, not quality. Never train a real FAE on it. ``"random:N"`` keeps only
the first N transformer blocks (real widths and shapes, less depth: rehearsals on small machines).
``$FAE_WEIGHTS_<NAME>=random`` (or ``random:N``) asks for the same wherever the backbone is looked
up without a ``weights=`` argument (``fae cache-latents``, ``FAE.from_pretrained``). The random
initialisation is seeded (:data:`RANDOM_SEED`), so every verb builds the same network.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from fae.errors import WeightsNotFoundError

WEIGHTS_DIR_ENV = "FAE_WEIGHTS_DIR"
RANDOM_WEIGHTS = "random"  # architecture only, random init (costs and rehearsals, not results)
RANDOM_SEED = 0  # the random weights of "random" / "random:N": one network across processes and verbs
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class WeightsSource:
    """A resolved weights location: ``local`` paths exist; otherwise ``location`` is a hub id."""

    location: str
    local: bool
    origin: str  # how it was chosen: "argument", "$FAE_WEIGHTS_X", "$FAE_WEIGHTS_DIR", "hub"


def env_var_for(name: str) -> str:
    """``dinov2-g14-reg`` -> ``FAE_WEIGHTS_DINOV2_G14_REG``."""
    return "FAE_WEIGHTS_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def how_to_supply(name: str) -> str:
    return (f"Set backbone.weights=<local folder or file>, or ${env_var_for(name)}=<path>, or put "
            f"them in ${WEIGHTS_DIR_ENV}/{name}/.")


def _existing(path: str, name: str, origin: str) -> WeightsSource:
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsNotFoundError(f"weights for '{name}' ({origin}): '{p}' does not exist. "
                                   + how_to_supply(name))
    return WeightsSource(str(p), True, origin)


def resolve_weights(name: str, weights: str | os.PathLike | None, hub_id: str | None) -> WeightsSource:
    """Pick the weights location for registry entry ``name`` (see the module docstring).

    ``hub_id`` is the last resort: a hub id, or an absolute path to weights shipped in a package.
    """
    if weights is not None:
        text = str(weights)
        if Path(text).expanduser().exists() or not _HUB_ID.match(text):
            return _existing(text, name, "argument")
        return WeightsSource(text, False, "argument")
    var = env_var_for(name)
    if os.environ.get(var):
        return _existing(os.environ[var], name, f"${var}")
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if root and (Path(root) / name).exists():
        return WeightsSource(str(Path(root) / name), True, f"${WEIGHTS_DIR_ENV}")
    if hub_id is None:
        raise WeightsNotFoundError(f"no weights known for '{name}'. " + how_to_supply(name))
    if Path(hub_id).is_absolute():  # a file shipped inside a Python package (EfficientNet-Lite0)
        return _existing(hub_id, name, "package")
    return WeightsSource(hub_id, False, "hub")


def is_random(weights: str | os.PathLike | None) -> bool:
    """True for ``"random"`` and ``"random:N"`` (module docstring)."""
    text = str(weights) if weights is not None else ""
    return text == RANDOM_WEIGHTS or text.startswith(RANDOM_WEIGHTS + ":")


def random_layers(weights: str | os.PathLike) -> int | None:
    """N of ``"random:N"`` (the first N blocks); None for ``"random"`` (the published depth)."""
    text = str(weights)
    if text == RANDOM_WEIGHTS:
        return None
    layers = text[len(RANDOM_WEIGHTS) + 1:]
    if not layers.isdigit() or int(layers) < 1:
        raise WeightsNotFoundError(f"weights '{text}': write 'random' or 'random:N' with N >= 1 blocks")
    return int(layers)


def random_from_env(name: str) -> str | None:
    """``$FAE_WEIGHTS_<NAME>`` when it asks for random weights, else None (a path there is read by
    :func:`resolve_weights`)."""
    value = os.environ.get(env_var_for(name))
    return value if is_random(value) else None


def hub_offline() -> bool:
    """True when the user asked Hugging Face to stay offline."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint, so an offline machine fails in seconds rather
    than after the hub client's retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
