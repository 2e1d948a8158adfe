"""Checks before compute: every file a command reads, and every place it writes, is checked before
the first model is built or the first forward pass runs, so a typo costs a second, not an hour.

A check is a function that returns quietly or raises an :class:`fae.errors.FAEError` with one
line naming the input and what to do. Verbs call the checks they need at their top (the first
failure is the error); ``fae train STAGE --dry-run`` runs every check of a stage as a
:class:`Check` list and prints a checklist (each item OK or MISSING, with the command that fetches
or creates what is missing), see :func:`run_checks` and :func:`checklist`.

The checks here are the generic ones (files, folders, output places); checks that know a format
live beside the code that reads it (reference statistics in ``fae.evaluation.stats``, head files
in ``fae.evaluation.linear_head``, data roots in ``fae.data.datasets``, weights in
``fae.backbones`` and ``fae.autoencoder.perceptual``) and are listed by the verbs and stages.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fae.errors import ConfigError, DataError, FAEError


@dataclass(frozen=True)
class Check:
    """One input or output of a command.

    Args:
        item: what it is, as the user sets it (e.g. ``"data.root"``, ``"backbone weights (dinov2-g14)"``).
        path: the file / folder / id it names, shown in the checklist.
        test: raises an FAEError (one line naming the input) when it is missing or unusable; it
            may return a string saying what it found (e.g. where weights resolved to).
        fix: the command that fetches or creates it (shown when it is missing); "" when none.
    """

    item: str
    path: str
    test: Callable[[], object]
    fix: str = ""


@dataclass(frozen=True)
class Outcome:
    """A check's result: ``error`` is None when the item is OK; ``found``: what an OK test said it found."""

    check: Check
    error: FAEError | None
    found: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_checks(checks: list[Check]) -> list[Outcome]:
    """Run every check (a failure does not stop the others)."""
    outcomes = []
    for check in checks:
        try:
            found = check.test()
            outcomes.append(Outcome(check, None, found if isinstance(found, str) else None))
        except FAEError as e:
            outcomes.append(Outcome(check, e))
    return outcomes


def checklist(outcomes: list[Outcome]) -> str:
    """The checklist ``--dry-run`` prints: one line per item, OK or MISSING with the reason and,
    indented below a missing item, the command that fetches or creates it."""
    lines = ["preflight:"]
    for outcome in outcomes:
        check = outcome.check
        if outcome.ok:
            lines.append(f"  OK       {check.item}: {outcome.found or check.path}")
            continue
        lines.append(f"  MISSING  {check.item}: {outcome.error}")
        if check.fix and check.fix not in str(outcome.error):
            lines.append(f"           fix: {check.fix}")
    return "\n".join(lines)


def missing_error(outcomes: list[Outcome]) -> FAEError | None:
    """One error for every failed check (None when all passed), on one line: each failure's
    message and the command that fixes it; one failure keeps its error class."""
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return None
    parts = [str(o.error) + (f" (fix: {o.check.fix})" if o.check.fix and o.check.fix not in str(o.error) else "")
             for o in failed]
    if len(failed) == 1:
        return type(failed[0].error)(parts[0])
    return type(failed[0].error)(f"{len(failed)} inputs are missing or unusable: "
                                 + "; ".join(f"{o.check.item}: {part}" for o, part in zip(failed, parts)))


def require(checks: list[Check]) -> None:
    """Run every check; raise one error naming all that failed (see :func:`missing_error`)."""
    error = missing_error(run_checks(checks))
    if error is not None:
        raise error


# ---------------------------------------------------------------------------------- inputs


def input_file(path: str | os.PathLike, what: str, hint: str = "",
               error: type[FAEError] = DataError) -> Path:
    """``path`` is an existing, readable regular file (not a folder). ``what`` names the input
    (``"--ref"``, ``"config key 'head'"``); ``hint`` says how to get it."""
    file = Path(path).expanduser()
    tail = f": {hint}" if hint else ""
    if not file.exists():
        raise error(f"{what} '{path}' does not exist{tail}")
    if file.is_dir():
        raise error(f"{what} '{path}' is a folder, not a file{tail}")
    try:
        with open(file, "rb") as f:
            f.read(1)
    except OSError as e:
        raise error(f"{what} '{path}' cannot be read ({e.strerror or type(e).__name__}){tail}") from None
    return file


def input_folder(path: str | os.PathLike, what: str, hint: str = "",
                 error: type[FAEError] = DataError) -> Path:
    """``path`` is an existing folder whose entries can be listed."""
    folder = Path(path).expanduser()
    tail = f": {hint}" if hint else ""
    if not folder.exists():
        raise error(f"{what} '{path}' does not exist{tail}")
    if not folder.is_dir():
        raise error(f"{what} '{path}' is a file, not a folder{tail}")
    try:
        next(os.scandir(folder), None)
    except OSError as e:
        raise error(f"{what} '{path}' cannot be listed ({e.strerror or type(e).__name__}){tail}") from None
    return folder


# --------------------------------------------------------------------------------- outputs


def output_file(path: str | os.PathLike, what: str) -> Path:
    """A file can be written at ``path``: it is not a folder, and its nearest existing parent is
    a folder this process can create files in (missing parents are created when writing, as
    ``fae.io.atomic_write`` does). Nothing is left behind."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise ConfigError(f"{what} '{path}' is a folder; name the file to write (a path inside it, or another)")
    _writable_parent(file, what, path)
    return file


def output_folder(path: str | os.PathLike, what: str, empty: bool = False) -> Path:
    """A folder can be written at ``path``: an existing folder (``empty``: with nothing in it) or a
    place where one can be created. Nothing is left behind."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} '{path}' is a file, not a folder; name a folder")
    if folder.is_dir():
        if empty and next(os.scandir(folder), None) is not None:
            raise ConfigError(f"{what} '{path}' is not empty; name a new folder or empty this one "
                              f"(files left in it would be mixed with the new ones)")
        _probe_write(folder, what, path)
        return folder
    _writable_parent(folder, what, path)
    return folder


def _writable_parent(target: Path, what: str, shown: str | os.PathLike) -> None:
    """The nearest existing ancestor of ``target`` is a folder that accepts a new file."""
    ancestor = target.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{what} '{shown}' cannot be created: '{ancestor}' is a file, not a folder")
    _probe_write(ancestor, what, shown)


def _probe_write(folder: Path, what: str, shown: str | os.PathLike) -> None:
    """Create and remove a temp file in ``folder``: the only test that holds for every reason a
    write fails (permissions, a read-only mount even for root, a full quota); ``os.access``
    answers yes to root on a read-only mount."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fae-preflight.", dir=folder)
    except OSError as e:
        raise ConfigError(f"{what} '{shown}' cannot be written: no new file can be created in "
                          f"'{folder}' ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    os.unlink(tmp)
