"""The checks before a training stage starts: every file it reads and the run folder it writes,
as :class:`fae.preflight.Check` items (with the command that fetches or creates each).

A stage lists its inputs in ``Stage.inputs()`` from the builders here; ``fae train`` runs them
before ``setup`` loads anything (the first failure names every missing input), and
``fae train STAGE --dry-run`` prints them as a checklist (:func:`preflight_stage`).
"""
from __future__ import annotations

from dataclasses import replace

from fae.autoencoder import FAE
from fae.autoencoder.perceptual import LPIPS_FILES, check_lpips_file
from fae.backbones.config import BackboneConfig
from fae.data.datasets import DATA_SOURCES, DataConfig, check_data, data_root_label
from fae.data.latent_cache import LatentCache
from fae.errors import FAEError
from fae.export import read_export_config
from fae.preflight import Check, Outcome, checklist, output_folder, run_checks
from fae.training.stage import Stage


def data_checks(data: DataConfig, *splits: str) -> list[Check]:
    """The files of ``data`` for each split (once per distinct split)."""
    return [Check(f"data ({split})", data_root_label(data, split),
                  lambda split=split: check_data(replace(data, split=split)), DATA_SOURCES[data.name])
            for split in dict.fromkeys(splits or (data.split,))]


def backbone_check(backbone: BackboneConfig) -> Check:
    """The frozen backbone's weights (where they resolve to; nothing is loaded)."""
    return Check(f"backbone weights ({backbone.name})", backbone.weights or "(registry lookup)",
                 backbone.check_weights, backbone.fetch_command())


def lpips_checks(vgg_path: str | None, heads_path: str | None) -> list[Check]:
    """The two LPIPS files (VGG16 weights and linear heads)."""
    return [Check(key, str(path), lambda path=path, key=key: check_lpips_file(path, key), LPIPS_FILES[key][1])
            for key, path in (("loss.lpips_vgg_path", vgg_path), ("loss.lpips_heads_path", heads_path))]


def fae_export_check(folder: str, key: str, made_by: str, pixel_decoder: bool = False) -> Check:
    """An FAE export this stage reads (its config.json and weights file; no weights are read);
    ``made_by``: the command that writes it."""
    return Check(f"FAE export ({key})", folder, lambda: FAE.check_export(folder, pixel_decoder=pixel_decoder),
                 f"{made_by} (it writes run_dir/export)")


def export_check(folder: str, kind: str, key: str, made_by: str) -> Check:
    """An export of another kind (e.g. the stage-Ib pixel decoder a fine-tune starts from)."""
    return Check(f"{kind} export ({key})", folder, lambda: read_export_config(folder, kind),
                 f"{made_by} (it writes run_dir/export)")


def latent_cache_check(cache: str, fae: str | None) -> Check:
    """A finished latent cache (manifest, shards), written by ``fae`` when that export exists."""
    def test() -> str:
        found = LatentCache(cache, fae=fae if fae and _has_export(fae) else None)
        return f"{cache} ({len(found)} latents of shape {list(found.latent_shape)})"

    source = f"fae={fae}" if fae else "fae=FAE_EXPORT (or backbone.name=NAME: raw tokens)"
    fetch = (f"fae cache-latents {source} out={cache} data.name=... data.root=... "
             f"(the images the generator learns; see the config's header)")
    return Check("latent cache (data.cache)", cache, test, fetch)


def _has_export(folder: str) -> bool:
    """Whether ``folder`` reads as an export (when not, the FAE export's own check says why)."""
    try:
        read_export_config(folder)
        return True
    except FAEError:
        return False


def run_dir_check(run_dir: str) -> Check:
    """The run folder can be written (created when missing; nothing is left behind)."""
    return Check("run folder (train.run_dir)", str(run_dir),
                 lambda: output_folder(run_dir, "config key 'train.run_dir'"))


def stage_checks(stage: Stage) -> list[Check]:
    """Everything ``stage`` reads (``Stage.inputs``) and its run folder."""
    return [*stage.inputs(), run_dir_check(stage.config.train.run_dir)]


def preflight_stage(stage: Stage, echo: bool = True) -> list[Outcome]:
    """Run every check of ``stage``; print the checklist (OK / MISSING with its fix) when ``echo``."""
    outcomes = run_checks(stage_checks(stage))
    if echo:
        print(checklist(outcomes), flush=True)
    return outcomes
