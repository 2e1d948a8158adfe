"""Every registered stage, and every shipped stage config, dry-runs: ``fae train <stage> --config F
--dry-run`` through the Python API (``load_stage`` + ``fae.training.engine.dry_run``), on the meta
device, with no weights, data or network.

A dry run is also the preflight: it checks every input the stage reads. On a machine without
ImageNet, DINOv2 / SigLIP weights, LPIPS files or earlier stages' exports (this test makes sure of
that: an empty working folder, an empty Hugging Face cache, the hub offline), each shipped config
names exactly the inputs it is missing; ``fae train --dry-run`` exits 2 on such a checklist.

Every YAML file under ``src/fae/configs/`` must be classified here (a stage config with its stage, or
one of the configs of another verb), so a new config is dry-run the day it is shipped.
(``tests/test_plan.py`` runs ``fae plan`` on the same files; this is the cheaper ``fae train`` path.)
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from fae.config import SHIPPED_CONFIGS
from fae.training.engine import dry_run
from fae.training.stages.registry import STAGES, load_stage

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Configs of other verbs (fae demo, fae experiment, fae sample): not one stage's config.
NOT_STAGE_CONFIGS = {"demo/demo.yaml", "imagenet256/sample_cfg.yaml",
                     *(f"experiments/{name}.yaml" for name in ("encoder", "latent-channels", "latent-space",
                                                               "starflow", "time-shift"))}
# Stage config -> (stage, overrides). The demo generators read their latent shape from an FAE
# export that the demo writes first; the overrides give it (the demo FAE's 8 x 8 x 8).
STAGE_CONFIGS = {
    "demo/autoencoder.yaml": ("autoencoder", []),
    "demo/pixel_decoder_ib.yaml": ("pixel-decoder", []),
    "demo/pixel_decoder_ii.yaml": ("pixel-decoder", []),
    "demo/generator.yaml": ("generator", ["model.latent_channels=8", "model.latent_size=8"]),
    "demo/t2i_generator.yaml": ("generator", ["mmdit.latent_channels=8", "mmdit.latent_size=8"]),
    "experiments/pixel_autoencoder.yaml": ("pixel-autoencoder", []),
    "experiments/starflow_generator.yaml": ("generator", ["flow.latent_channels=8", "flow.latent_size=8"]),
    "imagenet256/fae_dinov2g.yaml": ("autoencoder", []),
    "imagenet256/fae_siglip2g.yaml": ("autoencoder", []),
    "imagenet256/fae_dinov2g_c48.yaml": ("autoencoder", []),
    "imagenet256/pixel_decoder_vitl_ii_c48.yaml": ("pixel-decoder", []),
    "imagenet256/lightningdit_xl1_c48.yaml": ("generator", []),
    "imagenet256/sit_xl1_dinov2_tokens.yaml": ("generator", []),
    "imagenet256/sit_xl1_dinov2_tokens_wide.yaml": ("generator", []),
    "imagenet256/pixel_decoder_vitl.yaml": ("pixel-decoder", []),
    "imagenet256/pixel_decoder_vitl_ii.yaml": ("pixel-decoder", []),
    "imagenet256/pixel_decoder_vitl_ii_noisy.yaml": ("pixel-decoder", []),
    "imagenet256/lightningdit_xl1.yaml": ("generator", []),
    "imagenet256/sit_xl1.yaml": ("generator", []),
    "imagenet256/mmdit_t2i.yaml": ("generator", []),
    "imagenet256/starflow_fae.yaml": ("generator", []),
    "imagenet256/starflow_sdvae.yaml": ("generator", []),
}
# Stage II freezes a stage-Ia export, which must exist even for a dry run (it reads the backbone
# from it): the Ia recipe of the same folder, shrunk where stage II does not look.
# Config -> the checklist items a dry run reports missing here (the rest are OK). The demo's and the
# experiments' Fashion-MNIST and EfficientNet weights are on this machine; stage II's FAE is given.
IMAGENET_IMAGES = ["data (train)", "data (val)"]
GENERATOR_INPUTS = ["FAE export (data.fae)", "latent cache (data.cache)"]
LPIPS = ["loss.lpips_vgg_path", "loss.lpips_heads_path"]
EXPECTED_MISSING = {
    "demo/autoencoder.yaml": [],
    "demo/pixel_decoder_ib.yaml": [],
    "demo/pixel_decoder_ii.yaml": ["fae-pixel-decoder export (init_from)"],
    "demo/generator.yaml": GENERATOR_INPUTS,
    "demo/t2i_generator.yaml": GENERATOR_INPUTS,
    "experiments/pixel_autoencoder.yaml": [],
    "experiments/starflow_generator.yaml": GENERATOR_INPUTS,
    "imagenet256/fae_dinov2g.yaml": [*IMAGENET_IMAGES, "backbone weights (dinov2-g14)"],
    "imagenet256/fae_siglip2g.yaml": [*IMAGENET_IMAGES, "backbone weights (siglip2-g-opt16-256)"],
    "imagenet256/fae_dinov2g_c48.yaml": [*IMAGENET_IMAGES, "backbone weights (dinov2-g14)"],
    "imagenet256/pixel_decoder_vitl_ii_c48.yaml": [*IMAGENET_IMAGES, "backbone weights (dinov2-g14)", *LPIPS,
                                                   "fae-pixel-decoder export (init_from)"],
    "imagenet256/lightningdit_xl1_c48.yaml": GENERATOR_INPUTS,
    "imagenet256/sit_xl1_dinov2_tokens.yaml": ["latent cache (data.cache)"],  # raw tokens: no FAE export
    "imagenet256/sit_xl1_dinov2_tokens_wide.yaml": ["latent cache (data.cache)"],
    "imagenet256/pixel_decoder_vitl.yaml": [*IMAGENET_IMAGES, "backbone weights (dinov2-g14)", *LPIPS],
    "imagenet256/pixel_decoder_vitl_ii.yaml": [*IMAGENET_IMAGES, "backbone weights (dinov2-g14)", *LPIPS,
                                               "fae-pixel-decoder export (init_from)"],
    "imagenet256/pixel_decoder_vitl_ii_noisy.yaml": [*IMAGENET_IMAGES, "backbone weights (dinov2-g14)", *LPIPS,
                                                     "fae-pixel-decoder export (init_from)"],
    "imagenet256/lightningdit_xl1.yaml": GENERATOR_INPUTS,
    "imagenet256/sit_xl1.yaml": GENERATOR_INPUTS,
    "imagenet256/mmdit_t2i.yaml": GENERATOR_INPUTS,
    "imagenet256/starflow_fae.yaml": GENERATOR_INPUTS,
    "imagenet256/starflow_sdvae.yaml": ["latent cache (data.cache)"],  # an SD-VAE cache: no FAE export
}
STAGE_II_FAE = {"demo/pixel_decoder_ii.yaml": "demo/autoencoder.yaml",
                "imagenet256/pixel_decoder_vitl_ii.yaml": "imagenet256/fae_dinov2g.yaml",
                "imagenet256/pixel_decoder_vitl_ii_noisy.yaml": "imagenet256/fae_dinov2g.yaml",
                "imagenet256/pixel_decoder_vitl_ii_c48.yaml": "imagenet256/fae_dinov2g_c48.yaml"}
SHRUNK_FAE = ["model.encoder.heads=1", "model.encoder.head_dim=8", "model.decoder.depth=1",
              "model.decoder.width=32", "model.decoder.heads=1"]


def _name(path: Path) -> str:
    return path.relative_to(SHIPPED_CONFIGS).as_posix()


def _quiet_dry_run(stage_name: str, config: str, overrides: list[str]) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return dry_run(load_stage(stage_name, config, overrides))


@pytest.fixture
def bare_machine(tmp_path, monkeypatch):
    """No earlier runs (relative paths resolve in an empty folder), no local or cached backbone
    weights, the hub offline: what the preflight finds on a fresh machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))  # read per call
    for var in [v for v in os.environ if v.startswith("FAE_WEIGHTS_")]:
        monkeypatch.delenv(var)


def test_every_shipped_config_is_classified_and_every_stage_has_one():
    shipped = {_name(p) for p in SHIPPED_CONFIGS.rglob("*.yaml")}
    assert shipped == set(STAGE_CONFIGS) | NOT_STAGE_CONFIGS, "classify the new config in this file"
    shipped_stages = {name for name, module in STAGES.items() if module.startswith("fae.")}  # not tests' toy stage
    assert {stage for stage, _ in STAGE_CONFIGS.values()} == shipped_stages


@pytest.fixture(scope="module")
def stage_ii_faes(tmp_path_factory) -> dict[str, Path]:
    """Config name -> a random FAE export of its stage-Ia recipe (built on the CPU, shrunk)."""
    root, exports = tmp_path_factory.mktemp("stage_ia"), {}
    for ii, ia in STAGE_II_FAE.items():
        torch.manual_seed(0)
        fae = load_stage("autoencoder", str(SHIPPED_CONFIGS / ia), SHRUNK_FAE).build_models("cpu")["fae"]
        exports[ii] = fae.save_pretrained(root / Path(ia).stem)
    return exports


@pytest.mark.parametrize("name", sorted(STAGE_CONFIGS))
def test_every_shipped_stage_config_dry_runs(name, stage_ii_faes, tmp_path, bare_machine):
    stage_name, overrides = STAGE_CONFIGS[name]
    overrides = [*overrides, f"train.run_dir={tmp_path / 'run'}"]
    if name in stage_ii_faes:
        overrides.append(f"fae={stage_ii_faes[name]}")
    described = _quiet_dry_run(stage_name, str(SHIPPED_CONFIGS / name), overrides)
    assert described["total_parameters"] > 0 and described["phases"]
    assert described["resume_step"] is None and not (tmp_path / "run").exists()  # touches nothing
    assert described["missing"] == EXPECTED_MISSING[name]
    errors = {o.check.item: str(o.error) for o in described["preflight"] if not o.ok}
    for split in ("train", "val"):  # the checklist names the absent ImageNet root
        if f"data ({split})" in errors:
            assert "'/data/imagenet' does not exist" in errors[f"data ({split})"]
    assert not list(tmp_path.iterdir())  # the checks wrote nothing in the working folder


# Paper rows that are variants of another config (``base:``): what the dry run must print. FAE-48 and
# its generator have 48 latent channels; the raw-token generators read 1536-channel DINOv2-g tokens.
VARIANTS = {  # config -> stage, parameters per module, a line of the description, latent channels
    "imagenet256/fae_dinov2g_c48.yaml": ("autoencoder", {"fae": 208_814_688}, "latent: 48x16x16", 48),
    "imagenet256/lightningdit_xl1_c48.yaml": ("generator", {"generator": 674_933_040}, "on 48x16x16 latents", 48),
    "imagenet256/sit_xl1_dinov2_tokens.yaml": ("generator", {"generator": 678_319_872},
                                               "SiT-XL/1 (28 x 1152, 16 heads", 1536),
    "imagenet256/sit_xl1_dinov2_tokens_wide.yaml": ("generator", {"generator": 1_203_466_752},
                                                    "(28 x 1536, 24 heads", 1536),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_paper_variants_dry_run_at_their_stated_shapes(name, tmp_path, bare_machine):
    stage_name, parameters, line, channels = VARIANTS[name]
    stage = load_stage(stage_name, str(SHIPPED_CONFIGS / name), [f"train.run_dir={tmp_path / 'run'}"])
    assert stage.config.model.latent_channels == channels  # through the base: chain
    with contextlib.redirect_stdout(io.StringIO()):
        described = dry_run(stage)
    assert described["parameters"] == parameters
    assert any(line in text for text in described["lines"]), described["lines"]
    assert f"{sum(parameters.values()):,}" in (SHIPPED_CONFIGS / name).read_text()  # the header quotes it
