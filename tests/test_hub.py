"""Hub-style exports: every export folder is a Hugging Face Hub model repo as it stands.

``save_pretrained`` writes a model card (README.md) whose metadata the Hub's own parser accepts;
the evaluation's metrics can be written into it later; ``from_pretrained`` (and every CLI verb that
takes an export) resolves a Hub repo id through ``huggingface_hub``, tested offline against a
local Hub cache built in a temp folder; ``push_to_hub`` uploads the folder ``save_pretrained``
writes (the upload is captured here, no network).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, constants

from fae import freshness
from fae.autoencoder import FAE
from fae.cli import main as fae_main
from fae.errors import CheckpointError
from fae.evaluation.stats import read_sample_batch
from fae.export import HUB_FILES, Exportable, push_folder_to_hub, resolve_folder
from fae.generation import Generator
from fae.model_card import CARD_FILE, NOT_EVALUATED, PLACEHOLDER, update_model_card_metrics
from tiny import TINY_EXPORTS, perturbed, tiny_generator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PIPELINE_TAGS = {"fae-generator": "unconditional-image-generation",
                 "fae-flow-generator": "unconditional-image-generation", "fae-t2i-generator": "text-to-image"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the fake Hub commit of every cached repo


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _card(folder: Path) -> str:
    return (folder / CARD_FILE).read_text(encoding="utf-8")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face Hub cache in ``tmp_path``: returns ``add(repo_id, export_folder)``,
    which files the export as the repo's ``main`` (the layout ``huggingface_hub`` reads)."""
    cache = tmp_path / "hf_home" / "hub"
    for var, value in (("HF_HOME", cache.parent), ("HF_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, str(value))
    # huggingface_hub reads its environment once, at import: point the loaded copy at the cache too.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def add(repo_id: str, folder: Path) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        for name in HUB_FILES:
            shutil.copyfile(folder / name, snapshot / name)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
        return snapshot
    return add


# ------------------------------------------------------------------------------------------ model cards


@pytest.mark.parametrize("cls", list(TINY_EXPORTS), ids=lambda c: c.__qualname__)
def test_every_export_has_a_model_card_the_hub_accepts(cls, tmp_path):
    model = TINY_EXPORTS[cls]()
    folder = model.save_pretrained(tmp_path / "export")
    card = ModelCard.load(folder / CARD_FILE)  # the Hub's own parser of README metadata
    meta = card.data.to_dict()
    assert meta["library_name"] == "fae" and meta["license"] == "mit"
    assert {"fae", "feature-autoencoder", "image-generation"} <= set(meta["tags"])
    assert meta.get("pipeline_tag") == PIPELINE_TAGS.get(cls.export_format)
    assert huggingface_hub.metadata_load(folder / CARD_FILE) == meta

    text = _card(folder)
    count = sum(p.numel() for p in model.parameters())
    assert re.search(rf"^\| parameters \| {count:,}\b", text, re.M), f"card does not state {count:,} parameters"
    assert f"`{cls.export_format}` (format version {cls.export_version})" in text
    for heading in ("## Model", "## Configuration", "## Evaluation", "## How to use", "## Citation"):
        assert heading in text
    assert NOT_EVALUATED in text and "arXiv" in text and "2512.07829" in text and "CVPR" in text
    # The loading lines name a real class: the card's import line imports this very class.
    imports = re.search(r"^from (\S+) import (\w+)$", text, re.M)
    namespace: dict = {}
    exec(imports[0], namespace)
    assert namespace[imports[2]] is cls
    assert f'{cls.__name__}.from_pretrained("{PLACEHOLDER}")' in text


def test_the_fae_card_reads_its_shapes_from_the_config(tiny_fae_export):
    text = _card(tiny_fae_export)
    assert "| backbone | `tiny-vit` at 32 px, tokens 4 × 4 × 64 |" in text
    assert "| latent shape (c × h × w) | 4 × 4 × 4 |" in text
    fae = FAE.from_pretrained(tiny_fae_export)
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in fae.named_children()}
    assert f"pixel_decoder {parts['pixel_decoder']:,}" in text and f"encoder {parts['encoder']:,}" in text
    assert "--fae path/to/export" in text  # the CLI line


def test_metrics_are_written_into_the_card_later_and_replaced_not_appended(tmp_path):
    folder = tiny_generator().save_pretrained(tmp_path / "gen")
    before, identity = _card(folder), freshness.identity(folder)
    update_model_card_metrics(folder, {"fid_cfg": 61.23456, "fid_samples": 1000, "cfg": "euler, 2 steps"},
                              "FID of 1,000 class-balanced samples against 1,000 Fashion-MNIST test images.")
    text = _card(folder)
    assert NOT_EVALUATED not in text
    assert "| fid_cfg | 61.23 |" in text and "| fid_samples | 1000 |" in text and "| cfg | euler, 2 steps |" in text
    assert "**How:** FID of 1,000 class-balanced samples" in text
    head, tail = before.split("<!-- fae:metrics -->")[0], before.split("<!-- /fae:metrics -->")[1]
    assert text.startswith(head) and text.endswith(tail)  # only the metrics section changed
    assert ModelCard.load(folder / CARD_FILE).data.to_dict()["library_name"] == "fae"
    # The card is not the model: what was derived from this export does not go stale.
    assert freshness.identity(folder) == identity

    update_model_card_metrics(folder, {"fid_cfg": 50.0}, "a second evaluation")
    text = _card(folder)
    assert text.count("| fid_cfg |") == 1 and "| fid_cfg | 50 |" in text and "fid_samples" not in text
    assert "a second evaluation" in text and "class-balanced" not in text


def test_updating_metrics_of_a_folder_without_a_card_names_it(tmp_path):
    folder = tiny_generator().save_pretrained(tmp_path / "gen")
    (folder / CARD_FILE).unlink()  # an export written before fae wrote cards
    with pytest.raises(CheckpointError, match=r"'.*gen' has no model card \(README.md\)"):
        update_model_card_metrics(folder, {"fid": 1.0}, "how")
    assert Generator.from_pretrained(folder) is not None  # loading never needs the card


# ------------------------------------------------------------------------------------------ Hub ids


def test_from_pretrained_loads_a_hub_repo_id_from_the_local_cache_offline(hub_cache, tiny_fae_export, tmp_path):
    snapshot = hub_cache("someone/tiny-fae", tiny_fae_export)
    original = FAE.from_pretrained(tiny_fae_export)
    loaded = FAE.from_pretrained("someone/tiny-fae")
    assert _same_tensors(original, loaded) and loaded.identity() == original.identity()
    assert resolve_folder("someone/tiny-fae").resolve() == snapshot.resolve()
    # a pinned revision, in the name or as a keyword
    assert _same_tensors(original, FAE.from_pretrained(f"someone/tiny-fae@{COMMIT}"))
    assert _same_tensors(original, FAE.from_pretrained("someone/tiny-fae", revision="main"))

    gen = perturbed(tiny_generator())
    hub_cache("someone/tiny-gen", gen.save_pretrained(tmp_path / "gen"))
    assert _same_tensors(gen, Generator.from_pretrained("someone/tiny-gen"))


def test_a_local_folder_wins_over_a_hub_id_of_the_same_spelling(hub_cache, tiny_fae_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gen = tiny_generator()
    gen.save_pretrained(tmp_path / "someone" / "thing")  # ./someone/thing exists; the cache has no such repo
    assert _same_tensors(gen, Generator.from_pretrained("someone/thing"))


def test_a_repo_missing_from_the_offline_cache_is_a_one_line_error_saying_how_to_get_it(hub_cache):
    with pytest.raises(CheckpointError) as info:
        FAE.from_pretrained("someone/not-cached")
    message = str(info.value)
    assert "\n" not in message
    assert "'someone/not-cached' is not a local folder and not in the local Hugging Face Hub cache" in message
    assert "`hf download someone/not-cached`" in message and "huggingface-cli download someone/not-cached" in message
    with pytest.raises(CheckpointError, match="--revision v2"):
        FAE.from_pretrained("someone/not-cached@v2")


def test_a_name_that_is_neither_a_folder_nor_a_repo_id_is_a_one_line_error(hub_cache, tiny_fae_export, tmp_path):
    for name in (str(tmp_path / "missing"), "runs/a/b/export", "not a repo"):
        with pytest.raises(CheckpointError, match=rf"'{re.escape(name)}' is not an exported model: 'config.json' "
                                                  r"is missing .*owner/name") as info:
            FAE.from_pretrained(name)
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="neither an export folder nor a valid Hugging Face Hub repo id"):
        FAE.from_pretrained("someone/bad--name")  # the Hub's own rules refuse '--'
    hub_cache("someone/tiny-fae", tiny_fae_export)
    with pytest.raises(CheckpointError, match="pins revision 'v1' but revision='v2'"):
        FAE.from_pretrained("someone/tiny-fae@v1", revision="v2")


def test_fae_sample_takes_hub_repo_ids_where_it_takes_export_folders(hub_cache, tiny_fae_export, tmp_path, capsys):
    generator = tiny_generator().save_pretrained(tmp_path / "gen")
    hub_cache("someone/tiny-fae", tiny_fae_export)
    hub_cache("someone/tiny-gen", generator)
    common = ["--num", "4", "--batch-size", "4", "--seed", "3"]
    assert fae_main(["sample", "--generator", str(generator), "--fae", str(tiny_fae_export),
                     "--out", str(tmp_path / "local.npz"), *common]) == 0
    assert fae_main(["sample", "--generator", "someone/tiny-gen", "--fae", "someone/tiny-fae",
                     "--out", str(tmp_path / "hub.npz"), *common]) == 0
    (local, local_labels), (hub, hub_labels) = (read_sample_batch(tmp_path / f"{n}.npz") for n in ("local", "hub"))
    assert local.shape == (4, 28, 28, 3) and np.array_equal(local, hub) and np.array_equal(local_labels, hub_labels)
    assert fae_main(["sample", "--generator", "someone/missing", "--fae", "someone/tiny-fae",
                     "--out", str(tmp_path / "x.npz"), *common]) == 2
    assert "not in the local Hugging Face Hub cache" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ push


@pytest.fixture
def captured_push(tmp_path, monkeypatch):
    """HfApi's create_repo / upload_folder replaced by recorders: the uploaded folder is copied to
    ``tmp_path/uploaded/<n>`` (the temp folder is gone after the push)."""
    calls: dict[str, list] = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = tmp_path / "uploaded" / str(len(calls["upload_folder"]))
        shutil.copytree(folder_path, copy)
        calls["upload_folder"].append({"repo_id": repo_id, "folder": copy, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


@pytest.mark.parametrize("make", [lambda: TINY_EXPORTS[FAE](), lambda: perturbed(tiny_generator())],
                         ids=["fae", "generator"])
def test_push_to_hub_uploads_a_folder_the_hub_accepts_that_loads_back(make, captured_push):
    model: Exportable = make().eval()
    url = model.push_to_hub("someone/pushed", private=True, commit_message="first upload")
    assert url == f"https://huggingface.co/someone/pushed/commit/{COMMIT}"
    assert captured_push["create_repo"] == [{"repo_id": "someone/pushed", "private": True, "exist_ok": True}]
    (upload,) = captured_push["upload_folder"]
    assert upload["repo_id"] == "someone/pushed" and upload["commit_message"] == "first upload"
    folder = upload["folder"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(HUB_FILES)
    assert ModelCard.load(folder / CARD_FILE).data.to_dict()["library_name"] == "fae"
    text = _card(folder)
    assert f'from_pretrained("someone/pushed")' in text and PLACEHOLDER not in text
    loaded = type(model).from_pretrained(folder)
    assert _same_tensors(model, loaded)


def test_an_evaluated_export_folder_is_pushed_with_its_metrics_and_left_as_it_was(captured_push, tmp_path):
    folder = tiny_generator().save_pretrained(tmp_path / "gen")
    update_model_card_metrics(folder, {"fid_cfg": 42.5}, "50 samples")
    before = {name: (folder / name).read_bytes() for name in HUB_FILES}
    push_folder_to_hub(folder, "someone/evaluated")
    uploaded = captured_push["upload_folder"][0]["folder"]
    assert "| fid_cfg | 42.5 |" in _card(uploaded) and 'from_pretrained("someone/evaluated")' in _card(uploaded)
    assert {name: (folder / name).read_bytes() for name in HUB_FILES} == before  # the local card is unchanged
    assert (uploaded / "model.safetensors").read_bytes() == before["model.safetensors"]
    assert "commit_message" in captured_push["upload_folder"][0]
    with pytest.raises(CheckpointError, match="not a Hugging Face Hub repo id to push to"):
        push_folder_to_hub(folder, "someone/evaluated@v1")


# ------------------------------------------------------------------------------------------ the demo


def test_the_demo_evaluation_writes_its_metrics_into_the_exports_cards(tmp_path, tiny_fae_export):
    from fae.demo.evaluate import record_in_model_cards
    from tiny import tiny_pixel_decoder
    shutil.copytree(tiny_fae_export, tmp_path / "pixel_decoder_ii" / "export")
    tiny_pixel_decoder().save_pretrained(tmp_path / "pixel_decoder_ib" / "export")
    gen = tiny_generator().save_pretrained(tmp_path / "generator" / "export")
    (gen / CARD_FILE).unlink()  # a generator exported before fae wrote model cards gets one
    metrics = {"test_images": 500, "probe_train_images": 2000, "feature_cosine": 0.91234, "feature_rel_l2": 0.4,
               "psnr_from_latents": 20.04, "ssim_from_latents": 0.7, "rfid": 41.8, "psnr_from_features": 21.5,
               "fid_samples": 1000, "fid_cfg": 60.7, "cfg": "euler, 2 steps", "patch_flip_agreement": 0.5}
    record_in_model_cards(tmp_path, metrics)
    fae_card, ib_card, gen_card = (_card(tmp_path / n / "export") for n in ("pixel_decoder_ii", "pixel_decoder_ib",
                                                                              "generator"))
    assert "| feature_cosine | 0.9123 |" in fae_card and "| rfid | 41.8 |" in fae_card and "fid_cfg" not in fae_card
    assert "first 500 Fashion-MNIST test images" in fae_card and "2000 raw training tokens" in fae_card
    assert "| psnr_from_features | 21.5 |" in ib_card and "rfid" not in ib_card.split("## Evaluation")[1]
    assert "| fid_cfg | 60.7 |" in gen_card and "| cfg | euler, 2 steps |" in gen_card and "patch_flip" not in gen_card
    assert "1000 class-balanced samples" in gen_card
    assert ModelCard.load(gen / CARD_FILE).data.to_dict()["pipeline_tag"] == "unconditional-image-generation"
