"""One freshness rule for what the demo and the experiments derive (a trained stage, a latent
cache, an evaluation): an output records the content key of what produced it — the settings that
shape it and the identities of the files it read — in ``FOLDER/produced_by.json``. It is fresh
when that record equals the key its producer computes now. Modification times, sizes and
settings files are not asked: a rebuilt input with the same bytes changes nothing, a changed one
always shows.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from fae.io import atomic_save_json
from fae.model_card import CARD_FILE

RECORD = "produced_by.json"
_CHUNK = 1 << 20
_identities: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: hash a file once per process


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _identities:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        _identities[memo] = digest.hexdigest()
    return _identities[memo]


def identity(path: str | Path) -> str:
    """sha256 of a file's bytes; of a folder, of its files' relative names and identities (an
    export folder: config and weights; its model card is left out: it describes the model, and an
    evaluation writes metrics into it after what it evaluated was derived); ``"absent"`` when there
    is nothing."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    if not path.is_dir():
        return "absent"
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in (RECORD, CARD_FILE))
    listing = [(p.relative_to(path).as_posix(), _file_sha256(p)) for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def content_key(settings: Any, inputs: Iterable[str | Path] = ()) -> str:
    """sha256 of ``settings`` (JSON, keys sorted) and the identities of the ``inputs``, in order
    (their paths are left out: a moved folder with the same content is the same input)."""
    record = {"settings": settings, "inputs": [identity(p) for p in inputs]}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def recorded_key(folder: str | Path) -> str | None:
    """The key recorded in ``folder`` (None: nothing recorded, or an unreadable record)."""
    try:
        return json.loads((Path(folder) / RECORD).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record(folder: str | Path, key: str) -> None:
    """Record that ``folder`` is (being) produced by ``key`` (atomically; creates the folder)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_save_json({"key": key}, Path(folder) / RECORD)


def stale_reason(folder: str | Path, key: str) -> str | None:
    """None when ``folder`` records ``key``; otherwise why it is stale, in words."""
    old = recorded_key(folder)
    if old == key:
        return None
    return "it records no inputs" if old is None else "its inputs or settings changed"


def claim(folder: str | Path, key: str, is_complete: Callable[[], bool], what: str = "output") -> str:
    """Decide what to do with the output ``folder`` that ``key`` produces:

    * ``"skip"``: it records ``key`` and ``is_complete()`` — nothing to do;
    * ``"write"``: nothing there, or an interrupted output of ``key`` — write it (or resume);
    * ``"rewrite"``: it was produced from something else — deleted here (saying which folder and
      why), write it again.

    ``key`` is recorded before the caller writes, so an interrupted write resumes next time."""
    folder = Path(folder)
    stale = stale_reason(folder, key)
    if stale is None and is_complete():
        return "skip"
    action = "write"
    if stale is not None and folder.exists():
        print(f"[fae] deleting the {what} {folder}: {stale}", flush=True)
        shutil.rmtree(folder)
        action = "rewrite"
    record(folder, key)
    return action


def produce(folder: str | Path, key: str, is_complete: Callable[[], bool], write: Callable[[], Any],
            what: str = "output") -> str:
    """Run ``write()`` unless the output ``folder`` is fresh and complete (:func:`claim`); returns
    what happened as a pipeline step says it: "skipped (outputs valid)", "ran" (new or resumed),
    or "restarted (why)"."""
    stale = stale_reason(folder, key)
    action = claim(folder, key, is_complete, what)
    if action == "skip":
        return "skipped (outputs valid)"
    write()
    return "ran" if action == "write" else f"restarted ({stale})"
