"""`fae demo --quick` end to end on a tiny subset (through fae.cli.main), then a re-run that skips.

The test shrinks the quick profile further with demo-level overrides: EfficientNet-Lite0 at 64 px
(4x4 stride-16 tokens: the backbone is the costly part on CPU), a few hundred images, tens of steps, and
tiny evaluation sets. It checks that every artifact exists and loads, that the report inlines its
figures, that the metrics are finite and in sane ranges, and that a second run skips every stage.
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from PIL import Image

from fae.cli import main
from fae.evaluation.intervals import wilson

TINY = [
    "backbone.resolution=64",
    "autoencoder.overrides.train.steps=60", "autoencoder.overrides.data.limit=300",
    "autoencoder.overrides.eval.limit=100", "autoencoder.overrides.stats_images=300",
    "autoencoder.overrides.train.log_every=10", "autoencoder.overrides.eval.probe=false",
    "autoencoder.overrides.train.optim.warmup_steps=10",
    # a ViT decoder first paints the median image (PSNR ~10 dB); ~250 steps get it past that
    "pixel_decoder_ib.overrides.train.steps=300", "pixel_decoder_ib.overrides.train.batch_size=16",
    "pixel_decoder_ib.overrides.train.ckpt_every=300", "pixel_decoder_ib.overrides.train.log_every=25",
    "pixel_decoder_ib.overrides.train.optim.warmup_steps=10", "pixel_decoder_ib.overrides.train.optim.lr=0.001",
    "pixel_decoder_ib.overrides.loss.gan_start_step=100000",
    "pixel_decoder_ii.overrides.train.optim.warmup_steps=2",
    "pixel_decoder_ib.overrides.noise.scale_images=32", "pixel_decoder_ib.overrides.eval.limit=16",
    "pixel_decoder_ib.overrides.data.limit=200", "pixel_decoder_ii.overrides.data.limit=200",
    "pixel_decoder_ii.overrides.train.steps=20", "pixel_decoder_ii.overrides.train.batch_size=8",
    "pixel_decoder_ii.overrides.train.ckpt_every=20", "pixel_decoder_ii.overrides.train.log_every=5",
    "pixel_decoder_ii.overrides.eval.limit=16",
    "latents.limit=300",
    "generator.overrides.train.steps=60", "generator.overrides.train.batch_size=32",
    "generator.overrides.train.log_every=10", "generator.overrides.eval.grid_samples=0",
    "generator.overrides.model.depth=2", "generator.overrides.model.dim=64",
    "generator.overrides.train.optim.warmup_steps=5",
    "eval.test_images=40", "eval.probe_train_images=300", "eval.probe_epochs=50",
    "eval.fid_samples=20", "eval.grid_per_class=2", "eval.sampling.steps=8", "eval.batch_size=50",
    "eval.classifier_train_images=20000", "eval.classifier_steps=800",
    # --t2i: a tiny MMDiT (its steps are the generator's 60), 20 held-out + 20 seen-phrasing samples
    "t2i.generator.overrides.mmdit.depth=2", "t2i.generator.overrides.mmdit.dim=64",
    "t2i.generator.overrides.train.batch_size=32", "t2i.generator.overrides.train.log_every=10",
    "t2i.generator.overrides.eval.grid_samples=0", "t2i.generator.overrides.train.optim.warmup_steps=5",
    "t2i.seen_samples=20",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import fae.backbones.efficientnet as effnet

    out = tmp_path_factory.mktemp("demo")
    seen = []
    forward = effnet.EfficientNetLite0.forward_features

    def counted(self, pixels):
        seen.append(pixels.shape[0])
        return forward(self, pixels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(effnet.EfficientNetLite0, "forward_features", counted)
        assert main(["demo", "--quick", "--t2i", "--out", str(out), *TINY]) == 0
    (out / "backbone_images.txt").write_text(str(sum(seen)))
    return out


@pytest.mark.slow
def test_each_image_passes_the_backbone_once(demo_run):
    # Every stage, the latent cache and the evaluation share one token cache: the backbone sees the
    # first 300 training images (the largest limit asked for) and the first 100 test images once;
    # decoded images are judged by the pixel classifier, not through the backbone. The patch-level
    # checks add a flipped and a shifted copy of each of their 40 (eval.test_images) test images.
    assert int((demo_run / "backbone_images.txt").read_text()) == 300 + 100 + 2 * 40


@pytest.mark.slow
def test_demo_writes_report_figures_and_exports(demo_run, capsys):
    out = demo_run
    html = (out / "report.html").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    for name in ("reconstructions.png", "samples.png", "cfg_off_vs_on.png", "loss_autoencoder.png",
                 "loss_pixel_decoder_ib.png", "loss_pixel_decoder_ii.png", "loss_generator.png",
                 "patch_maps.png"):
        assert name in figures
    assert len(re.findall(r"src='data:image/png;base64,", html)) == len(figures)  # self-contained
    assert Image.open(out / "summary.png").size[0] > 500  # the README's picture, beside the report
    for words in ("Targets", "generation FID", "FAE.from_pretrained", "Patch-level maps",
                  "left-right flip of the same image"):
        assert words in html

    from fae.autoencoder import FAE
    from fae.generation import Generator

    fae = FAE.from_pretrained(out / "pixel_decoder_ii" / "export")
    generator = Generator.from_pretrained(out / "generator" / "export")
    z = generator.sample(range(3), torch.tensor([0, 5, 9]), seed=0,
                         config=generator.sampling.__class__(steps=4))
    images = fae.decode(z)
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    timings = json.loads((out / "timings.json").read_text())
    assert [s["status"] for s in timings["steps"]].count("ran") == 10  # 7 + the three --t2i steps
    for words in ("What each stage produced", "FID floor: other real test images", "PSNR decoded from latents",
                  "decoded test reconstructions recognised", "ceiling)"):
        assert words in html, words


@pytest.mark.slow
def test_demo_metrics_are_sane(demo_run):
    m = json.loads((demo_run / "eval" / "metrics.json").read_text())["metrics"]
    for key in ("probe_raw", "probe_reconstructed", "probe_latent", "class_accuracy_cfg",
                "class_accuracy_no_cfg", "class_accuracy_reconstructions", "class_accuracy_reconstructions_ib",
                "latent_class_accuracy_cfg", "latent_class_accuracy_no_cfg", "classifier_accuracy_real"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["probe_raw"] > 0.5  # 10 classes: chance is 0.1
    assert m["probe_reconstructed"] > 0.2 and m["probe_latent"] > 0.2
    assert m["psnr_from_features"] > 10 and m["psnr_from_latents"] > 10
    assert 0 < m["ssim_from_latents"] <= 1
    assert 0 < m["feature_cosine"] <= 1
    for key in ("rfid", "fid_cfg", "fid_real_floor"):
        assert math.isfinite(m[key]) and m[key] > 0, key
    lo, hi = m["fid_cfg_ci"]  # bootstrap 95% around the FID of the same features
    assert lo < m["fid_cfg"] < hi
    for key, n in (("class_accuracy_cfg", m["fid_samples"]), ("class_accuracy_no_cfg", m["class_accuracy_samples_no_cfg"])):
        assert m[f"{key}_ci"] == list(wilson(round(m[key] * n), n)), key  # Wilson 95% of a share of n samples
    assert m["fid_samples"] == 20 and m["test_images"] == 40
    assert m["patch_images"] == 40 and -1 <= m["patch_map_correlation"] <= 1
    for check in ("flip", "shift", "pair"):
        for key in (f"patch_{check}_tokens", f"patch_{check}_latents", f"patch_{check}_chance"):
            assert 0.0 <= m[key] <= 1.0, key
    # Backbone tokens of a shifted image are the same tokens moved (a CNN): far above chance.
    assert m["patch_shift_tokens"] > m["patch_shift_chance"] + 0.2
    # Real images are closer to other real images than the tiny demo's samples are.
    assert m["fid_real_floor"] < m["fid_cfg"]


@pytest.mark.slow
def test_demo_judge_recognises_real_images(demo_run):
    # The judge of every decoded-image accuracy, as the demo trained it in this tiny setting (800
    # steps on 20K training images): >= 85% on 1000 real test images, so a broken classifier
    # cannot pass its numbers off as the decoder's.
    from fae.data.fashion_mnist import FashionMNIST
    from fae.demo.config import load_demo_config
    from fae.demo.shared_eval import judge_path
    from fae.evaluation.pixel_classifier import PixelClassifier

    judge = PixelClassifier.load(judge_path(load_demo_config(None, True, TINY)[0]))  # the shared cache's
    test = FashionMNIST("test", limit=1000)
    assert judge.accuracy(test.images, test.labels) >= 0.85
    m = json.loads((demo_run / "eval" / "metrics.json").read_text())["metrics"]
    assert m["classifier_accuracy_real"] == judge.accuracy(test.images[:40], test.labels[:40])


@pytest.mark.slow
def test_demo_rerun_skips_every_stage(demo_run, capsys, monkeypatch):
    def no_inception(*args, **kwargs):
        raise AssertionError("a re-run embedded images: the reference, floor and scores are cached")

    monkeypatch.setattr("fae.evaluation.scorer.load_inception", no_inception)
    assert main(["demo", "--quick", "--t2i", "--out", str(demo_run), *TINY]) == 0
    timings = json.loads((demo_run / "timings.json").read_text())
    assert all(s["status"].startswith("skipped") for s in timings["steps"]), timings
    assert "report: " in capsys.readouterr().out


@pytest.mark.slow
def test_demo_t2i_trains_on_generated_captions_and_reports_held_out_phrasings(demo_run):
    from fae.data.fashion_mnist import FashionMNIST
    from fae.data.latent_cache import LatentCache
    from fae.demo.captions import ATTRIBUTES, CLASS_WORDS, HELD_OUT_TEMPLATES, attributes, class_thresholds, prompt_set
    from fae.generation.t2i_generator import TextToImageGenerator
    from fae.text import load_text_encoder

    # the captioned cache: the generator's 300 training images, each captioned with its class
    # word and its dark/light attribute by the stated rule, in training phrasings only
    cache = LatentCache(demo_run / "t2i" / "latents", fae=demo_run / "pixel_decoder_ii" / "export")
    captions = cache.captions()
    train = FashionMNIST("train", limit=300)
    attrs = attributes(train.images, train.labels, class_thresholds(train.images, train.labels))
    assert len(captions) == 300 and len(set(captions)) <= 10 * 2 * 4
    for text, y, a in zip(captions, train.labels.tolist(), attrs.tolist()):
        words = text.replace(",", "").split()
        assert CLASS_WORDS[y] in text and ATTRIBUTES[a] in words and ATTRIBUTES[1 - a] not in words
    held_out = set(prompt_set(10 * 2 * len(HELD_OUT_TEMPLATES), HELD_OUT_TEMPLATES)[0])
    assert held_out.isdisjoint(captions)
    # its embeddings are all-MiniLM-L6-v2's of each caption
    minilm = load_text_encoder("all-minilm-l6-v2", max_length=16)
    tokens, mask, pooled = cache.text_item(7)
    expected = minilm.encode([captions[7]])
    torch.testing.assert_close(pooled.float(), expected.pooled[0], atol=2e-3, rtol=0)
    assert mask.bool().tolist() == expected.mask[0].tolist()

    t = json.loads((demo_run / "t2i" / "eval" / "metrics.json").read_text())["metrics"]
    m = json.loads((demo_run / "eval" / "metrics.json").read_text())["metrics"]
    assert t["steps"] == 60  # the class-conditional generator's steps
    assert t["held_out_samples"] == 20 and t["seen_samples"] == 20
    for key in ("class_accuracy_held_out", "attribute_accuracy_held_out", "class_accuracy_seen",
                "attribute_accuracy_seen"):
        assert 0.0 <= t[key] <= 1.0, key
    assert math.isfinite(t["fid_held_out"]) and t["fid_held_out"] > t["fid_real_floor"] == m["fid_real_floor"]
    assert t["fid_reference_images"] == m["test_images"]
    html = (demo_run / "report.html").read_text()
    for words in ("Text-to-image (--t2i)", "class accuracy, held-out phrasings", "attribute (dark / light)",
                  "FID floor: other real test images", "an image of a {attr} {name}"):
        assert words in html, words
    assert (demo_run / "figures" / "t2i_prompts.png").is_file()
    generator = TextToImageGenerator.from_pretrained(demo_run / "t2i" / "generator" / "export")
    z = generator.sample(prompts=["an image of a light sneaker"], seed=0,
                         config=generator.sampling.__class__(steps=4))
    assert z.shape == (1, *generator.config.latent_shape) and torch.isfinite(z).all()


def test_demo_config_quick_profile_and_overrides():
    from fae.demo.config import load_demo_config
    from fae.errors import ConfigError

    default, base = load_demo_config(None, quick=False, overrides=[])
    quick, _ = load_demo_config(None, quick=True, overrides=["autoencoder.overrides.train.steps=7"])
    assert (base / default.autoencoder.config).is_file()
    assert quick.backbone.resolution < default.backbone.resolution
    assert default.backbone.name == "efficientnet-lite0-s16"
    assert quick.eval.fid_samples < default.eval.fid_samples
    assert "train.steps=7" in quick.autoencoder.override_list()  # the command line wins over --quick
    assert "train.steps=300" in quick.generator.override_list()
    with pytest.raises(ConfigError, match="eval.fid_sample"):
        load_demo_config(None, quick=False, overrides=["eval.fid_sample=3"])
    t2i, _ = load_demo_config(None, quick=True, overrides=[], t2i=True)
    assert t2i.t2i.enabled and not quick.t2i.enabled and t2i.t2i.seen_samples < default.t2i.seen_samples
