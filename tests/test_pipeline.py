"""``fae.FAEPipeline`` (labels or prompts -> images in one call) on tiny exports, and the user-facing
guards of the FAE itself: float images in the wrong range are refused by ``encode``, and
``decode`` / ``decode_features`` return results without autograd history unless asked."""
from __future__ import annotations

import subprocess
import sys
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import fae as fae_package
from fae.autoencoder import FAE
from fae.cli import main as fae_main
from fae.errors import ConfigError, ImageRangeError, LatentCacheError
from fae.evaluation.stats import read_sample_batch
from fae.generation import load_generator
from fae.generation.decode import SampleDecoder, sampler_config
from fae.generation.samplers import PAPER_CFG_SCHEDULE
from fae.pipeline import FAEPipeline, FAEPipelineOutput
from tiny import perturbed, tiny_generator

pytestmark = pytest.mark.usefixtures("one_thread")


class PromptEncoder:
    """A stand-in text encoder (12-d tokens, 6-d pooled): each prompt's embedding is seeded by its
    text, so equal prompts condition equally and different ones differently."""

    dim, pooled_dim = 12, 6
    info = SimpleNamespace(name="prompt-hash")

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gens = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
        tokens = torch.stack([torch.randn(3, 12, generator=g) for g in gens])  # [B, 3, 12]
        pooled = torch.stack([torch.randn(6, generator=g) for g in gens])  # [B, 6]
        return tokens, torch.ones(len(prompts), 3, dtype=torch.bool), pooled


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_fae_export):
    """Generator exports of each kind (noise on every tensor, so the network is not the zero
    velocity of a fresh adaLN-Zero model), recording the tiny FAE's identity."""
    root = tmp_path_factory.mktemp("pipeline")
    identity = {"identity": FAE.from_pretrained(tiny_fae_export).identity()}
    folders = {"fae": tiny_fae_export}
    for kind in ("diffusion", "flow", "mmdit"):
        gen = perturbed(tiny_generator(kind), seed=1, std=0.2)
        gen.fae_identity = identity
        folders[kind] = gen.save_pretrained(root / kind)
    paper = perturbed(tiny_generator("diffusion"), seed=1, std=0.2)
    paper.fae_identity, paper.sampling.cfg_schedule = identity, list(PAPER_CFG_SCHEDULE)
    folders["paper_cfg"] = paper.save_pretrained(root / "paper_cfg")
    return folders


@pytest.fixture(scope="module")
def pipe(exports) -> FAEPipeline:
    return FAEPipeline.from_pretrained(exports["diffusion"], exports["fae"], device="cpu")


def test_fae_pipeline_is_exported_lazily():
    assert fae_package.FAEPipeline is FAEPipeline and "FAEPipeline" in dir(fae_package)
    code = "import sys, fae; print('torch' in sys.modules, 'fae.pipeline' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]
    with pytest.raises(AttributeError, match="no attribute 'Pipeline'"):
        fae_package.Pipeline


def test_output_types_hold_the_same_images(pipe):
    pil = pipe(class_labels=[0, 1, 2, 1], seed=3, progress=False)
    assert isinstance(pil, FAEPipelineOutput) and len(pil.images) == 4
    assert all(isinstance(im, Image.Image) and im.mode == "L" and im.size == (28, 28) for im in pil.images)
    as_uint8 = np.stack([np.asarray(im) for im in pil.images])  # [4, 28, 28]
    assert as_uint8.std() > 5  # images, not a constant
    arr = pipe(class_labels=[0, 1, 2, 1], seed=3, output_type="np", progress=False).images
    assert arr.dtype == np.float32 and arr.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(arr[..., 0], as_uint8 / np.float32(255))
    pt = pipe(class_labels=[0, 1, 2, 1], seed=3, output_type="pt", progress=False).images
    assert pt.dtype == torch.float32 and pt.shape == (4, 1, 28, 28)
    torch.testing.assert_close(pt.permute(0, 2, 3, 1).numpy(), arr, rtol=0, atol=0)
    (images,) = pipe(class_labels=[0, 1, 2, 1], seed=3, output_type="np", progress=False, return_dict=False)
    np.testing.assert_array_equal(images, arr)


def test_images_do_not_depend_on_batch_size_and_follow_the_seed(pipe):
    labels = [2, 0, 1, 1, 0]
    one = pipe(class_labels=labels, seed=7, output_type="np", progress=False).images
    chunked = pipe(class_labels=labels, seed=7, batch_size=2, output_type="np", progress=False).images
    np.testing.assert_array_equal(chunked, one)
    np.testing.assert_array_equal(pipe(class_labels=labels, seed=7, output_type="np", progress=False).images, one)
    other = pipe(class_labels=labels, seed=8, output_type="np", progress=False).images
    assert np.abs(other - one).mean() > 0.01
    # seed=None draws from torch's global generator: torch.manual_seed makes it repeatable
    torch.manual_seed(11)
    a = pipe(class_labels=labels, output_type="np", progress=False).images
    torch.manual_seed(11)
    np.testing.assert_array_equal(pipe(class_labels=labels, output_type="np", progress=False).images, a)


def test_images_equal_those_of_fae_sample(pipe, exports, tmp_path):
    out = tmp_path / "samples.npz"
    assert fae_main(["sample", "--generator", str(exports["diffusion"]), "--fae", str(exports["fae"]),
                     "--num", "5", "--seed", "4", "--out", str(out), "sampling.steps=3"]) == 0
    images, labels = read_sample_batch(out)  # uint8 RGB [5, 28, 28, 3]; classes cycle 0, 1, 2, 0, 1
    got = pipe(num_images=5, seed=4, num_inference_steps=3, output_type="np", progress=False).images
    np.testing.assert_array_equal((got[..., 0] * 255).round().astype(np.uint8), images[..., 0])
    same = pipe(class_labels=labels.tolist(), seed=4, num_inference_steps=3, output_type="np", progress=False)
    np.testing.assert_array_equal(same.images, got)


def test_steps_and_guidance_override_the_stored_sampler(pipe, exports):
    labels = torch.tensor([0, 2, 1])

    def reference(generator, **overrides) -> np.ndarray:
        decoder = SampleDecoder(generator, pipe.fae, sampler_config(generator, overrides))
        return decoder.all(range(3), labels, seed=5).images.numpy()[:, 0] / np.float32(255)  # [3, 28, 28]

    def drawn(p: FAEPipeline, **kw) -> np.ndarray:
        return p(class_labels=labels.tolist(), seed=5, output_type="np", progress=False, **kw).images[..., 0]

    np.testing.assert_array_equal(drawn(pipe), reference(pipe.generator))  # stored: 2 Euler steps
    np.testing.assert_array_equal(drawn(pipe, num_inference_steps=4), reference(pipe.generator, steps=4))
    assert np.abs(drawn(pipe, num_inference_steps=4) - drawn(pipe)).mean() > 1e-3
    guided = drawn(pipe, guidance_scale=3.0)
    np.testing.assert_array_equal(guided, reference(pipe.generator, cfg_scale=3.0))
    assert np.abs(guided - drawn(pipe)).mean() > 1e-3
    # a stored piecewise schedule is replaced by the one scale
    paper = FAEPipeline.from_pretrained(exports["paper_cfg"], exports["fae"], device="cpu")
    np.testing.assert_array_equal(drawn(paper, guidance_scale=3.0),
                                  reference(paper.generator, cfg_scale=3.0, cfg_schedule=[]))
    assert np.abs(drawn(paper) - drawn(paper, guidance_scale=3.0)).mean() > 1e-3


def test_text_to_image_and_flow_generators(exports):
    t2i = FAEPipeline.from_pretrained(exports["mmdit"], exports["fae"], device="cpu")
    t2i.generator.attach_text_encoder(PromptEncoder())
    prompts = ["a shoe", "a bag", "a shoe"]
    images = t2i(prompts=prompts, seed=2, output_type="pt", progress=False).images  # [3, 1, 28, 28]
    expected = SampleDecoder(t2i.generator, t2i.fae).all(range(3), seed=2, prompts=prompts).images
    torch.testing.assert_close(images, expected.float() / 255, rtol=0, atol=0)
    assert (images[0] - images[2]).abs().mean() > 1e-3  # same prompt, own noise per index
    flow = FAEPipeline.from_pretrained(exports["flow"], exports["fae"], device="cpu")
    drawn = flow(class_labels=[0, 2], seed=1, output_type="pt", progress=False).images
    expected = SampleDecoder(flow.generator, flow.fae).all(range(2), torch.tensor([0, 2]), seed=1).images
    torch.testing.assert_close(drawn, expected.float() / 255, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="num_inference_steps= does not apply to a flow"):
        flow(class_labels=[0], num_inference_steps=5, progress=False)


def test_a_flow_with_a_finetuned_decoder_decodes_with_that_export(exports, tiny_fae_export, tmp_path):
    """STARFlow's finetuned_vae: the flow's stored sampler names a pixel decoder fine-tuned on noisy
    latents (same FAE identity, other pixel-decoder weights); from_pretrained decodes with it in
    place of the FAE it was given, as fae sample does, and its images are that decoder's."""
    finetuned = FAE.from_pretrained(tiny_fae_export)
    perturbed(finetuned.pixel_decoder, seed=7, std=0.1)
    finetuned_folder = finetuned.save_pretrained(tmp_path / "noisy_decoder")
    assert finetuned.identity() == FAE.from_pretrained(tiny_fae_export).identity()
    flow = load_generator(exports["flow"])
    flow.sampling.finetuned_decoder = str(finetuned_folder)
    flow_folder = flow.save_pretrained(tmp_path / "flow_finetuned")
    pipe = FAEPipeline.from_pretrained(flow_folder, exports["fae"], device="cpu")
    for name, tensor in pipe.fae.pixel_decoder.state_dict().items():
        assert torch.equal(tensor, finetuned.pixel_decoder.state_dict()[name]), name
    drawn = pipe(class_labels=[0, 2], seed=1, output_type="pt", progress=False).images
    expected = SampleDecoder(pipe.generator, finetuned).all(range(2), torch.tensor([0, 2]), seed=1).images
    torch.testing.assert_close(drawn, expected.float() / 255, rtol=0, atol=0)
    plain = FAEPipeline.from_pretrained(exports["flow"], exports["fae"], device="cpu")
    assert not torch.equal(drawn, plain(class_labels=[0, 2], seed=1, output_type="pt", progress=False).images)


def test_wrong_arguments_are_one_line_errors_naming_them(pipe, exports):
    t2i = FAEPipeline.from_pretrained(exports["mmdit"], exports["fae"], device="cpu")
    unconditional = FAEPipeline(load_generator(exports["diffusion"]), pipe.fae)
    unconditional.generator.model.config.num_classes = 0  # what the pipeline reads of the kind
    cases = [
        (lambda: pipe(prompts=["a shoe"]), "prompts= needs a text-to-image generator.*class_labels="),
        (lambda: pipe(), r"pass class_labels=\[...\] \(or num_images=N"),
        (lambda: pipe(class_labels=[0, 3]), r"class_labels \[3\] are outside"),
        (lambda: pipe(class_labels=["0"]), "class_labels= must be a non-empty list of ints"),
        (lambda: pipe(class_labels=[0, 1], num_images=3), "num_images=3 disagrees"),
        (lambda: pipe(class_labels=[0], output_type="latent"), "output_type must be one of pil, np, pt"),
        (lambda: pipe(class_labels=[0], num_inference_steps=0), "num_inference_steps= must be an int >= 1"),
        (lambda: pipe(class_labels=[0], guidance_scale=0), "guidance_scale= must be > 0"),
        (lambda: t2i(class_labels=[0]), r"class_labels= does not apply: .* text-to-image; pass prompts="),
        (lambda: t2i(), r"text-to-image: pass prompts=\[...\]"),
        (lambda: unconditional(class_labels=[1]), "unconditional; pass num_images=N"),
        (lambda: unconditional(), "unconditional: pass num_images=N"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_device_and_to(pipe):
    assert pipe.device == torch.device("cpu")
    assert pipe.to("cpu") is pipe and pipe.fae.latent_mean.device == pipe.device


def test_pipeline_refuses_a_generator_of_another_fae(exports, tmp_path):
    gen = load_generator(exports["diffusion"])
    gen.fae_identity = {"identity": "0" * 64}
    with pytest.raises(LatentCacheError, match="latents of another FAE"):
        FAEPipeline(gen, FAE.from_pretrained(exports["fae"]))


# ---- the FAE's own guards ----------------------------------------------------------------------


def test_encode_refuses_float_images_outside_zero_one(tiny_fae_export):
    fae = FAE.from_pretrained(tiny_fae_export)
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ImageRangeError, match=r"looks like \[-1, 1\]: use \(x \+ 1\) / 2"):
        fae.encode(images * 2 - 1)
    with pytest.raises(ImageRangeError, match="looks like 0-255: divide by 255") as info:
        fae.encode(images * 255)
    assert "[0, 1]" in str(info.value) and isinstance(info.value, ValueError)
    with torch.no_grad():
        as_uint8 = (images * 255).round().to(torch.uint8)
        torch.testing.assert_close(fae.encode(as_uint8), fae.encode(as_uint8.float() / 255))  # uint8 as before
        fae.encode(images * 1.01)  # a resampling overshoot is no convention change
        tokens = torch.randn(2, 16, 64) * 50  # raw tokens have their own scale: no image check
        assert fae.encode(tokens).shape == (2, 4, 4, 4)


def test_decode_returns_no_autograd_history_unless_asked(tiny_fae_export):
    fae = FAE.from_pretrained(tiny_fae_export)
    z = torch.randn(2, 4, 4, 4, requires_grad=True)
    images, features = fae.decode(z), fae.decode_features(z)
    assert images.grad_fn is None and not images.requires_grad and features.grad_fn is None
    traced = fae.decode(z, requires_grad=True)
    torch.testing.assert_close(traced, images, rtol=0, atol=0)
    traced.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert fae.decode_features(z, requires_grad=True).requires_grad
    with torch.no_grad():  # requires_grad=True keeps the caller's mode, it does not force grads on
        assert not fae.decode(z, requires_grad=True).requires_grad
