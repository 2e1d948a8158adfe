"""Exported models on disk: one folder, ``config.json`` + ``model.safetensors`` (the HF layout).

Every exported model (the FAE, the pixel decoder, the generator) uses :class:`Exportable`, so the
three folders share one format rule: ``config.json`` starts with

    {"format": "<kind>", "format_version": <n>, ...the model's own config...}

and ``model.safetensors`` holds its tensors. Loading checks the kind (a generator folder given as
an FAE is refused by name), refuses versions newer than this code knows, and still reads the two
older spellings written before the key was unified (FAE: ``"version"``; pixel decoder:
``"model": "fae-pixel-decoder"`` and no ``format``). Writes are atomic (temp file, fsync, rename);
the weights go first, then the model card (``README.md``, :mod:`fae.model_card`), so a folder with
a readable ``config.json`` has its weights and its card.

The folder is a Hugging Face Hub model repo as it stands: ``from_pretrained`` takes a local folder
or a Hub repo id ``owner/name[@revision]`` (resolved through ``huggingface_hub``, which honours
``HF_HUB_OFFLINE`` and the local Hub cache), and ``push_to_hub`` uploads what ``save_pretrained``
writes.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file

from fae import __version__
from fae.errors import CheckpointError
from fae.io import atomic_save_json, atomic_save_safetensors, read_json_object
from fae.model_card import CARD_FILE, name_model_card, write_model_card

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_KEY, VERSION_KEY = "format", "format_version"
LEGACY_VERSION_KEY = "version"  # FAE exports before the key was unified
LEGACY_PIXEL_DECODER = "fae-pixel-decoder"  # written under "model" before the key was unified
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)  # what a Hub repo of an export holds
# owner/name[@revision]: a name that is no local path is looked up on the Hub when it has this shape
HUB_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?")

E = TypeVar("E", bound="Exportable")


def resolve_folder(folder: str | Path, revision: str | None = None) -> Path:
    """The export folder itself, a training run folder's ``export/`` sub-folder, or, for a name
    that is no local path but a Hub repo id ``owner/name[@revision]``, its snapshot folder in the
    local Hugging Face Hub cache (fetched first unless ``HF_HUB_OFFLINE`` is set). A local path
    wins over a Hub id of the same spelling. Other missing names come back as paths: readers
    report the missing ``config.json``."""
    path = Path(folder)
    if isinstance(folder, str) and not path.exists() and HUB_REPO_ID.fullmatch(folder):
        return hub_snapshot(folder, revision)
    if not (path / CONFIG_FILE).is_file() and (path / "export" / CONFIG_FILE).is_file():
        return path / "export"
    return path


def hub_snapshot(name: str, revision: str | None = None) -> Path:
    """The local snapshot folder of Hub repo ``owner/name[@revision]`` (only the export's files).

    ``huggingface_hub.snapshot_download`` decides between the network and the local cache
    (``HF_HUB_OFFLINE=1``: the cache only); its errors become one-line CheckpointErrors.
    """
    match = HUB_REPO_ID.fullmatch(name)
    if match is None:
        raise CheckpointError(f"'{name}' is neither an export folder nor a Hugging Face Hub repo id (owner/name)")
    repo, pinned = match["repo"], match["revision"]
    if pinned and revision and pinned != revision:
        raise CheckpointError(f"'{name}' pins revision '{pinned}' but revision='{revision}' was passed: give one")
    revision = pinned or revision
    # Imported here: huggingface_hub's download stack adds ~0.2 s to `import fae`, and only Hub ids need it.
    import huggingface_hub
    from huggingface_hub import errors

    def download(**offline) -> Path:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=list(HUB_FILES),
                                                      library_name="fae", library_version=__version__, **offline))

    try:
        try:
            return download()
        except errors.OfflineModeIsEnabled:
            # huggingface_hub 1.x (1.33: the GPU image's) asks the Hub for a pinned commit's file list even
            # when HF_HUB_OFFLINE is set, where 2.x reads its cache: then the cache alone decides
            return download(local_files_only=True)
    except errors.HFValidationError:
        raise CheckpointError(f"'{name}' is neither an export folder nor a valid Hugging Face Hub repo id "
                              "(owner/name)") from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"Hugging Face Hub repo '{repo}' has no revision '{revision}'") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(f"'{name}' is not a local folder, and the Hugging Face Hub has no repo '{repo}' "
                              "(or it is private or gated: log in with `hf auth login`)") from None
    except errors.LocalEntryNotFoundError:
        pin = f" --revision {revision}" if revision else ""
        raise CheckpointError(f"'{name}' is not a local folder and not in the local Hugging Face Hub cache "
                              f"(HF_HUB_OFFLINE is set or the Hub cannot be reached): download it first with "
                              f"`hf download {repo}{pin}` (older huggingface_hub: `huggingface-cli download "
                              f"{repo}{pin}`)") from None
    except (errors.HfHubHTTPError, OSError) as e:
        details = " ".join(str(e).split())
        raise CheckpointError(f"cannot fetch Hugging Face Hub repo '{repo}': {details[:300]}") from None


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
                              f"(exports are written by `fae train ...` into run_dir/export; a Hugging Face "
                              f"Hub model is named owner/name)")
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
        """Write ``folder/model.safetensors``, ``folder/README.md`` (the model card, not evaluated
        yet) then ``folder/config.json``, each atomically; returns the folder."""
        folder = Path(folder)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.export_tensors().items()}
        atomic_save_safetensors(tensors, folder / WEIGHTS_FILE, metadata={FORMAT_KEY: self.export_format})
        config = self.export_config()
        self.save_model_card(folder, config)
        atomic_save_json({FORMAT_KEY: self.export_format, VERSION_KEY: self.export_version, **config},
                         folder / CONFIG_FILE)
        return folder

    def save_model_card(self, folder: str | Path, config: dict[str, Any] | None = None) -> Path:
        """Write ``folder/README.md`` alone (not evaluated yet), e.g. beside an export written
        before fae wrote model cards; returns its path. ``config``: ``export_config()`` where the
        caller has it already (the FAE's hashes its tensors)."""
        config = self.export_config() if config is None else config
        return write_model_card(folder, self.export_format, self.export_version, config, *parameter_counts(self))

    @classmethod
    def from_pretrained(cls: type[E], name_or_folder: str | Path, device: str | torch.device = "cpu",
                        revision: str | None = None) -> E:
        """Rebuild an export on ``device``, in eval mode, from a local export folder, a run folder
        holding ``export/``, or a Hugging Face Hub repo id ``owner/name[@revision]`` (``revision``:
        a branch, tag or commit of that repo)."""
        folder = resolve_folder(name_or_folder, revision)
        config = read_export_config(folder, cls.export_format, cls.export_version)
        model = cls.from_export(config, read_tensors(folder), folder)
        return model.to(device).eval()

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = False,
                    commit_message: str | None = None) -> str:
        """Upload this model to the Hub repo ``repo_id`` (created if missing) as the folder
        ``save_pretrained`` writes; returns the commit's URL. The card is not evaluated yet: to
        upload an evaluated export with its metrics, use :func:`push_folder_to_hub` on its folder."""
        with tempfile.TemporaryDirectory(prefix="fae-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "export")
            return push_folder_to_hub(folder, repo_id, token=token, private=private, commit_message=commit_message)


def parameter_counts(model: torch.nn.Module) -> tuple[int, dict[str, int]]:
    """(parameters in all, per direct sub-module that has any): the counts a model card states."""
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    return sum(p.numel() for p in model.parameters()), {name: n for name, n in parts.items() if n}


def push_folder_to_hub(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                       commit_message: str | None = None) -> str:
    """Upload an export folder (config, weights, model card with its metrics) to the Hub repo
    ``repo_id`` (``owner/name``, created if missing) in one commit; returns the commit's URL.

    The files are staged in a temp folder (weights hard-linked where the file system allows) so
    that the card's loading lines can name ``repo_id`` without editing the folder itself.
    """
    folder = resolve_folder(folder)
    match = HUB_REPO_ID.fullmatch(repo_id)
    if match is None or match["revision"]:
        raise CheckpointError(f"'{repo_id}' is not a Hugging Face Hub repo id to push to (owner/name)")
    for name in HUB_FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"export '{folder}' has no '{name}': load it and save_pretrained it again")
    kind = read_json_object(folder / CONFIG_FILE, CheckpointError).get(FORMAT_KEY)
    # Imported here: huggingface_hub's upload stack adds ~0.2 s to `import fae`, and only pushes need it.
    from huggingface_hub import HfApi, errors
    with tempfile.TemporaryDirectory(prefix="fae-hub-") as tmp:
        staged = Path(tmp)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            _link_or_copy(folder / name, staged / name)
        shutil.copyfile(folder / CARD_FILE, staged / CARD_FILE)
        name_model_card(staged, kind, repo_id)
        api = HfApi(token=token, library_name="fae", library_version=__version__)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=staged,
                                       commit_message=commit_message or f"Upload {kind} export with fae {__version__}")
        except (errors.HfHubHTTPError, OSError) as e:
            details = " ".join(str(e).split())
            raise CheckpointError(f"cannot push '{folder}' to Hugging Face Hub repo '{repo_id}': "
                                  f"{details[:300]}") from None
    return str(commit)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy of multi-GB weights) where the file system allows one, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
