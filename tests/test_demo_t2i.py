"""The pieces of ``fae demo --t2i`` that need no trained pipeline: the generated captions (class in
several phrasings, dark/light by the stated rule, held-out phrasings never in training, seeded) and
the encoder wrapper that embeds each distinct caption once. The end-to-end run is in test_demo.py."""
from __future__ import annotations

import pytest
import torch

from fae.demo.captions import (ATTRIBUTES, CLASS_WORDS, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, attributes, caption,
                               class_thresholds, prompt_set, training_captions)
from fae.text.encoders import TextEmbeddings
from fae.text.unique import UniqueCaptionEncoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_attribute_rule_splits_each_class_at_its_median():
    from fae.data.fashion_mnist import FashionMNIST

    train = FashionMNIST("train", limit=1000)
    thresholds = class_thresholds(train.images, train.labels)
    attrs = attributes(train.images, train.labels, thresholds)
    mean = train.images.double().mean(dim=(1, 2, 3))
    for c in range(10):
        values = mean[train.labels == c]
        # brute force: the lower median, and "dark" = at or below it
        assert thresholds[c] == values.sort().values[(len(values) - 1) // 2]
        assert attrs[train.labels == c].tolist() == (values > thresholds[c]).long().tolist()
        dark = int((attrs[train.labels == c] == 0).sum())
        assert dark == (len(values) + 1) // 2  # half the class, whatever its size
    # sandals are far darker than pullovers on average: the rule is per class, not global
    assert thresholds[5] < thresholds[2]


def test_captions_are_seeded_name_the_class_and_attribute_and_held_out_phrasings_are_unseen():
    labels, attrs = torch.arange(200) % 10, (torch.arange(200) // 10) % 2
    first, again, other = (training_captions(labels, attrs, seed) for seed in (0, 0, 1))
    assert first == again and first != other
    for text, y, a in zip(first, labels.tolist(), attrs.tolist()):
        words = text.replace(",", "").replace(":", "").split()
        assert CLASS_WORDS[y] in text and ATTRIBUTES[a] in words and ATTRIBUTES[1 - a] not in words
    every_training_caption = {caption(t, y, a) for t in TRAIN_TEMPLATES for y in range(10) for a in range(2)}
    assert set(first) <= every_training_caption and len(set(first)) > 60  # the phrasings all occur
    held_out, classes, held_attrs = prompt_set(10 * 2 * len(HELD_OUT_TEMPLATES), HELD_OUT_TEMPLATES)
    assert len(set(held_out)) == 60 and set(held_out).isdisjoint(every_training_caption)
    assert torch.bincount(classes).tolist() == [6] * 10 and torch.bincount(held_attrs).tolist() == [30, 30]
    assert held_out[9] == "an image of a dark ankle boot" and held_out[0] == "an image of a dark t-shirt"
    assert caption("a photo of a {attr} {name}", 9, 1) == "a photo of a light ankle boot"
    assert caption("a {name} in a {attr} tone", 9, 0) == "an ankle boot in a dark tone"


class CountingEncoder:
    """A stand-in text encoder: embeddings are a fixed function of the caption; records its calls."""

    dim, pooled_dim = 3, 2

    def __init__(self):
        self.calls: list[list[str]] = []

    def identity(self) -> dict:
        return {"name": "counting"}

    def encode(self, captions):
        self.calls.append(list(captions))
        codes = torch.tensor([[float(len(c)), float(sum(map(ord, c)) % 97)] for c in captions])
        tokens = torch.stack([codes[:, 0], codes[:, 1], codes.sum(1)], dim=1)[:, None, :].repeat(1, 4, 1)
        mask = torch.tensor([[True, True, len(c) % 2 == 0, False] for c in captions])
        return TextEmbeddings(tokens, mask, codes)


def test_unique_caption_encoder_embeds_each_distinct_caption_once():
    inner = CountingEncoder()
    wrapped = UniqueCaptionEncoder(inner)
    batch1 = ["a dark coat", "a bag", "a dark coat", "light shirt"]
    batch2 = ["a bag", "a new one", "a bag"]
    out1, out2 = wrapped.encode(batch1), wrapped.encode(batch2)
    assert inner.calls == [["a dark coat", "a bag", "light shirt"], ["a new one"]]
    assert wrapped.encoded == 4 and wrapped.identity() == {"name": "counting"} and wrapped.dim == 3
    for got, captions in ((out1, batch1), (out2, batch2)):
        direct = CountingEncoder().encode(captions)
        for field in range(3):
            torch.testing.assert_close(got[field], direct[field], rtol=0, atol=0)


def test_t2i_steps_on_a_tiny_fae_cache_train_evaluate_and_report(tmp_path):
    """The --t2i steps as the demo runs them (quick profile, shrunk), on a tiny FAE export and a
    briefly trained judge in place of the demo's earlier stages: the captioned cache is written
    once and then skipped, the MMDiT trains at the given steps, and the evaluation and the report
    section hold the figures the issue asks for."""
    import json

    from fae.data.fashion_mnist import FashionMNIST
    from fae.data.latent_cache import LatentCache
    from fae.demo.config import load_demo_config
    from fae.demo.shared_eval import judge_path
    from fae.demo.pipeline import stage_spec, train_stage
    from fae.demo.t2i import t2i_cache_step, t2i_evaluate_step, t2i_overrides, training_set
    from fae.demo.t2i_report import add_t2i_section
    from fae.evaluation.pixel_classifier import ClassifierConfig, train_pixel_classifier
    from fae.generation.t2i_generator import TextToImageGenerator
    from fae.report import Report
    from test_generation_pipeline import export_fae

    out = tmp_path
    export_fae(out / "pixel_decoder_ii" / "export", seed=0)
    g = "t2i.generator.overrides."
    cfg, base = load_demo_config(None, quick=True, t2i=True, overrides=[
        "latents.limit=120", "latents.batch_size=40", "eval.fid_samples=20", "eval.test_images=16",
        "eval.batch_size=20", "eval.sampling.steps=3", "t2i.seen_samples=20", f"{g}mmdit.depth=1",
        f"{g}mmdit.dim=32", f"{g}mmdit.heads=2", f"{g}train.batch_size=16", f"{g}train.log_every=5",
        f"{g}train.ckpt_every=0", f"{g}eval.grid_samples=0", f"{g}eval.loss_items=32",
        f"{g}train.optim.warmup_steps=2", f"{g}train.progress=false"])
    train = FashionMNIST("train", limit=2000)  # a briefly trained judge where the demo's would be
    train_pixel_classifier(train.images, train.labels, ClassifierConfig(steps=40)).save(judge_path(cfg))
    assert t2i_cache_step(cfg, out) == "ran"
    assert t2i_cache_step(cfg, out) == "skipped (outputs valid)"
    cache = LatentCache(out / "t2i" / "latents", fae=out / "pixel_decoder_ii" / "export")
    assert cache.captions() == training_set(cfg)[0] and cache.text_encoder["name"] == "all-minilm-l6-v2"
    spec = stage_spec("t2i.generator", "generator", cfg.t2i.generator, base, t2i_overrides(cfg, out, 12))
    assert train_stage(spec, [out / "t2i" / "latents" / "manifest.json"], TextToImageGenerator.from_pretrained) == "ran"
    status, t = t2i_evaluate_step(cfg, out, {"fid_real_floor": 12.5})
    assert status == "ran" and t2i_evaluate_step(cfg, out, {})[0] == "skipped (outputs valid)"
    assert t["steps"] == 12 and t["held_out_samples"] == 20 and t["seen_samples"] == 20
    for key in ("class_accuracy_held_out", "attribute_accuracy_held_out", "class_accuracy_seen",
                "attribute_accuracy_seen"):
        assert 0.0 <= t[key] <= 1.0 and abs(20 * t[key] - round(20 * t[key])) < 1e-9, key  # a share of 20
    assert t["fid_held_out"] > 0 and t["fid_real_floor"] == 12.5 and t["fid_reference_images"] == 16
    saved = json.loads((out / "t2i" / "eval" / "metrics.json").read_text())["metrics"]
    assert saved == json.loads(json.dumps(t))
    report = Report("t2i")
    main = {"class_accuracy_cfg": 0.5, "fid_cfg": 99.0, "cfg": "euler"}
    add_t2i_section(report, out, main, t, per_row=2)
    html = report.render()
    assert "class accuracy, held-out phrasings" in html and "an image of a {attr} {name}" in html
    assert (out / "figures" / "t2i_prompts.png").is_file()
