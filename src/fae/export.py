"""Exported models on disk: one folder, ``config.json`` + ``model.safetensors`` (the HF layout).

Every exported model (the FAE, the pixel decoder, the generator) uses :class:`Exportable`, so the
three folders share one format rule: ``config.json`` starts with

    {"format": "<kind>", "format_version": <n>, ...the model's own config...}

and ``model.safetensors`` holds its tensors. Loading checks the kind (a generator folder given as
an FAE is refused by name), refuses versions newer than this code knows, and still reads the two
older spellings written before the key was unified (FAE: ``"version"``; pixel decoder:
``"model": "fae-pixel-decoder"`` and no ``format``). Writes are atomic (temp file, fsync, rename);
the weights go first, so a folder with a readable ``config.json`` has its weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file

from fae.errors import CheckpointError
from fae.io import atomic_save_json, atomic_save_safetensors, read_json_object

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_KEY, VERSION_KEY = "format", "format_version"
LEGACY_VERSION_KEY = "version"  # FAE exports before the key was unified
LEGACY_PIXEL_DECODER = "fae-pixel-decoder"  # written under "model" before the key was unified

E = TypeVar("E", bound="Exportable")


def resolve_folder(folder: str | Path) -> Path:
    """The export folder itself, or a training run folder's ``export/`` sub-folder."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() and (folder / "export" / CONFIG_FILE).is_file():
        return folder / "export"
    return folder


def read_export_config(folder: str | Path, kind: str | None = None, max_version: int = 1) -> dict[str, Any]:
    """``config.json`` of an export with ``format`` / ``format_version`` normalised.

    Args:
        folder: the export folder (or a run folder holding ``export/``).
        kind: the expected ``format`` (None accepts any FAE export).
        max_version: the newest format version the caller can read.
    """
    folder = resolve_folder(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"'{folder}' is not an exported model: '{CONFIG_FILE}' is missing "
                              f"(exports are written by `fae train ...` into run_dir/export)")
    data = _normalise_legacy(read_json_object(path, CheckpointError))
    found = data.get(FORMAT_KEY)
    if not isinstance(found, str) or not found.startswith("fae-"):
        raise CheckpointError(f"'{path}' is not an FAE export (no '{FORMAT_KEY}' key naming one)")
    if kind is not None and found != kind:
        raise CheckpointError(f"'{folder}' holds a '{found}' export, not a '{kind}' one")
    version = data.get(VERSION_KEY)
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"'{path}': '{VERSION_KEY}' must be a positive integer, got {version!r}")
    if version > max_version:
        raise CheckpointError(f"'{folder}' is a '{found}' export of format version {version}; this "
                              f"version of fae reads up to {max_version}: upgrade fae to load it")
    return data


def _normalise_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Exports of the older spellings (both format version 1) -> the unified keys."""
    data = dict(data)
    if FORMAT_KEY not in data and data.get("model") == LEGACY_PIXEL_DECODER:
        data[FORMAT_KEY] = data.pop("model")
    if VERSION_KEY not in data and str(data.get(FORMAT_KEY, "")).startswith("fae-"):
        data[VERSION_KEY] = data.pop(LEGACY_VERSION_KEY, 1)
    return data


def read_tensors(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """``model.safetensors`` of an export (errors name the file)."""
    path = resolve_folder(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"export '{path.parent}' has no '{WEIGHTS_FILE}'")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read '{path}': {e}") from None


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], folder: str | Path) -> None:
    """``load_state_dict(strict=True)`` with the mismatch reported as a CheckpointError."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        details = " ".join(str(e).split())  # one line: the first tensors that differ
        raise CheckpointError(f"weights in '{folder}' do not match its {CONFIG_FILE}: "
                              f"{details[:300]}{' ...' if len(details) > 300 else ''}") from None


class Exportable:
    """Mixin: ``save_pretrained`` / ``from_pretrained`` for one kind of exported model.

    A subclass sets ``export_format`` (and ``export_version`` when its content changes) and
    implements ``export_config`` (JSON-safe dict), ``export_tensors`` and the classmethod
    ``from_export(config, tensors, folder)``.
    """

    export_format: ClassVar[str]
    export_version: ClassVar[int] = 1

    def export_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def export_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_export(cls: type[E], config: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> E:
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``folder/model.safetensors`` then ``folder/config.json`` (atomically); returns the folder."""
        folder = Path(folder)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.export_tensors().items()}
        atomic_save_safetensors(tensors, folder / WEIGHTS_FILE, metadata={FORMAT_KEY: self.export_format})
        config = {FORMAT_KEY: self.export_format, VERSION_KEY: self.export_version, **self.export_config()}
        atomic_save_json(config, folder / CONFIG_FILE)
        return folder

    @classmethod
    def from_pretrained(cls: type[E], folder: str | Path, device: str | torch.device = "cpu") -> E:
        """Rebuild an export (or a run folder's ``export/``) on ``device``, in eval mode."""
        folder = resolve_folder(folder)
        config = read_export_config(folder, cls.export_format, cls.export_version)
        model = cls.from_export(config, read_tensors(folder), folder)
        return model.to(device).eval()
