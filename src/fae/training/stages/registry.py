"""The stage registry: stage name -> the module that defines it -> its config -> the stage.

Every caller that turns a stage name into a config or a runnable stage asks here: ``fae train``,
``fae plan``, the demo, the experiment and the benchmarks. A stage module defines
``CONFIG_CLASS`` (its typed config) and ``build_stage(cfg)``; it may define ``build_plan_stage(cfg)``
for ``fae plan`` (stage II before its FAE exists). Modules are imported on first use, so naming
the stages (``fae --help``) imports no model code; tests register a fixture stage with
:func:`register`.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from fae.config import load_config
from fae.errors import ConfigError

# Stage name -> module. Users see the paper's stages; ``pixel-autoencoder`` is the pixel VAE of
# ``fae experiment latent-space``.
STAGES: dict[str, str] = {
    "autoencoder": "fae.training.stages.autoencoder",
    "pixel-decoder": "fae.training.stages.pixel_decoder",
    "generator": "fae.training.stages.generator",
    "pixel-autoencoder": "fae.training.stages.pixel_autoencoder",
}


def register(name: str, module: str) -> None:
    """Make stage ``name`` (defined by importable ``module``) known to this process."""
    STAGES.setdefault(name, module)


def stage_module(name: str) -> ModuleType:
    """The module defining stage ``name``."""
    if name not in STAGES:
        raise ConfigError(f"no stage '{name}'; known: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])


def config_class(name: str) -> type:
    """The typed config (dataclass) of stage ``name``."""
    return stage_module(name).CONFIG_CLASS


def stage_config(name: str, config: str | None, overrides: list[str] = ()) -> Any:
    """The validated config of stage ``name``: YAML file (optional), then ``key=value`` overrides."""
    return load_config(config_class(name), config, list(overrides))


def load_stage(name: str, config: str | None, overrides: list[str] = ()):
    """Validate stage ``name``'s config (file + overrides) and build the stage."""
    return stage_module(name).build_stage(stage_config(name, config, overrides))


def load_plan_stage(name: str, config: str | None, overrides: list[str] = ()):
    """The stage as ``fae train`` builds it (same validation, same errors), through the module's
    ``build_plan_stage`` when it has one (a stage that can be planned before its inputs exist)."""
    module = stage_module(name)
    cfg = stage_config(name, config, overrides)
    return getattr(module, "build_plan_stage", module.build_stage)(cfg)
