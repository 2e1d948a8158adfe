"""Errors FAE raises on purpose. The CLI prints them as one line, without a traceback."""

# The distribution's name on PyPI (`pip install fae-latents`); the import name is `fae`.
DISTRIBUTION = "fae-latents"


def install_hint(extra: str) -> str:
    """The pip command that installs the optional dependencies ``extra`` (pyproject's extras)."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


class FAEError(Exception):
    """Base class: a problem with the user's input, files or environment, stated plainly."""


class ConfigError(FAEError):
    """A config key is unknown, has the wrong type, or a value is out of range."""


class WeightsNotFoundError(FAEError):
    """Pretrained weights could not be found or loaded; the message says how to supply them."""


class DataError(FAEError):
    """A dataset file is missing, unreadable or corrupt; the message names the file."""


class CheckpointError(FAEError):
    """A checkpoint or exported model is missing, corrupt, or does not match the config."""


class BackboneMismatchError(CheckpointError):
    """Features, a backbone or a pixel decoder do not match the backbone an FAE was trained on."""


class TrainingError(FAEError):
    """Training cannot continue (e.g. a non-finite loss under ``train.nan_policy=stop``)."""


class LatentCacheError(CheckpointError):
    """A latent cache is incomplete, corrupt, or was written by a different FAE than the one given."""


class ImageRangeError(FAEError, ValueError):
    """Float images hold values outside the range an API expects (e.g. [-1, 1] or 0-255 floats
    given to ``FAE.encode``, which takes [0, 1]); the message says how to rescale them."""


class MissingExtraError(FAEError):
    """An optional dependency is not installed; the message names the extra that installs it."""
