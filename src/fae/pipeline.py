"""``FAEPipeline``: an exported generator and its FAE as one call from labels or prompts to images.

    pipe = FAEPipeline.from_pretrained("runs/demo/generator/export", "runs/demo/pixel_decoder_ii/export")
    images = pipe(class_labels=[0, 1, 2], seed=0).images                     # 3 PIL images
    images = pipe(num_images=16, seed=0, output_type="np").images            # classes cycle, [16, H, W, C]
    t2i = FAEPipeline.from_pretrained("runs/t2i/export", "runs/fae/export")
    images = t2i(prompts=["a red shoe"], guidance_scale=3.0).images

It is a thin layer over :class:`fae.generation.decode.SampleDecoder`, the path ``fae sample`` takes:
the generator samples latents in the FAE's scale (it un-normalises them with its own latent
statistics), the FAE decodes them, and the images are quantised to uint8 as a PNG holds them. So
image i is a function of (seed, i, its label or prompt) only, equal to sample i of ``fae sample``
with the same seed and settings, whatever ``batch_size`` is. The output follows diffusers'
``ImagePipelineOutput``: an object with ``.images``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np
import torch
from PIL import Image

from fae.autoencoder import FAE
from fae.errors import ConfigError
from fae.generation import load_generator
from fae.generation.decode import SampleDecoder, check_pair, decoder_folder, sampler_config
from fae.generation.flow_config import FlowSamplerConfig
from fae.generation.generator import LatentGenerator
from fae.generation.t2i_generator import TextToImageGenerator

OutputType = Literal["pil", "np", "pt"]
OUTPUT_TYPES = ("pil", "np", "pt")
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
Images = Union[list[Image.Image], np.ndarray, torch.Tensor]


@dataclass
class FAEPipelineOutput:
    """What :class:`FAEPipeline` returns (diffusers' ``ImagePipelineOutput`` shape).

    Attributes:
        images: per ``output_type``: "pil" a list of ``PIL.Image`` (mode "L" for one channel, "RGB"
            for three); "np" float32 [N, H, W, C] in [0, 1]; "pt" float32 [N, C, H, W] in [0, 1] on
            the CPU. The float values are the uint8 images / 255 (what a PNG of them holds, and what
            every FAE metric scores).
    """

    images: Images


class FAEPipeline:
    """Class labels or prompts -> images, through a generator and the FAE it was trained on.

    Args:
        generator: a loaded generator of any kind (:func:`fae.generation.load_generator`).
        fae: the FAE (with a pixel decoder) whose latents the generator models; another FAE is
            refused (:func:`fae.generation.decode.check_pair`).
        torch_dtype: compute dtype: float32 (default, exact) or bfloat16 / float16, which run the
            generator and decoder under autocast with float32 weights (what ``fae sample
            precision=bf16`` does).
    """

    def __init__(self, generator: LatentGenerator, fae: FAE, torch_dtype: torch.dtype | None = None):
        check_pair(generator, fae.identity(), fae.latent_shape)
        if torch_dtype is not None and torch_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"torch_dtype must be one of {', '.join(map(str, COMPUTE_DTYPES))}, got {torch_dtype}")
        self.generator, self.fae = generator.eval(), fae.eval()
        self.torch_dtype = torch_dtype or torch.float32

    @classmethod
    def from_pretrained(cls, generator: str | Path, fae: str | Path, device: str | torch.device | None = None,
                        torch_dtype: torch.dtype | None = None) -> "FAEPipeline":
        """Load both exports (folders, or run folders holding ``export/``) onto ``device`` (default:
        CUDA when available, else the CPU). ``torch_dtype``: see the class.

        A flow generator whose stored sampler names a ``finetuned_decoder`` (STARFlow's
        ``finetuned_vae``: its samples skip the score step, so a pixel decoder fine-tuned on noisy
        latents must decode them) is decoded by that export in place of ``fae``, as ``fae sample``
        does. Built from loaded models (the constructor), the pipeline uses the FAE it is given."""
        device = _default_device(device)
        loaded = load_generator(generator, device=device)
        decoder = decoder_folder(loaded.sampling, str(fae))  # fae, or the flow's fine-tuned export
        return cls(loaded, FAE.from_pretrained(decoder, device=device), torch_dtype)

    @property
    def device(self) -> torch.device:
        """Where sampling and decoding run (the generator's latent statistics live there)."""
        return self.generator.latent_mean.device

    def to(self, device: str | torch.device) -> "FAEPipeline":
        """Move the generator and the FAE to ``device``; returns the pipeline."""
        self.generator.to(device)
        self.fae.to(device)
        return self

    def __call__(self, class_labels: int | Sequence[int] | None = None, prompts: str | Sequence[str] | None = None,
                 num_images: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seed: int | None = None, batch_size: int = 64,
                 output_type: OutputType = "pil", progress: bool = True,
                 return_dict: bool = True) -> FAEPipelineOutput | tuple[Images]:
        """Draw images, under ``torch.inference_mode`` on the pipeline's device, ``batch_size`` at a
        time (a flow generator's denoising step keeps autograd for its own score).

        Args:
            class_labels: one class per image (class-conditional generators).
            prompts: one prompt per image (text-to-image generators).
            num_images: how many images when neither is given: an unconditional generator's count,
                or, for a class-conditional one, images cycling through every class (the
                ``fae sample`` convention).
            num_inference_steps: sampler steps (default: the generator's stored settings; a flow
                generator has none: it samples token by token).
            guidance_scale: classifier-free guidance scale w, 1 = none (default: the stored
                settings); given, it replaces a stored piecewise schedule and keeps the stored
                interval.
            seed: image i is drawn from noise seeded by (seed, i); None draws a seed from torch's
                global generator (so ``torch.manual_seed`` fixes it too).
            batch_size: images per generator and decoder pass (not the number of images, unlike
                diffusers' unconditional pipelines); it does not change the images.
            output_type: "pil", "np" or "pt" (see :class:`FAEPipelineOutput`).
            progress: show a progress display.
            return_dict: False returns the tuple ``(images,)``, as diffusers pipelines do.
        """
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        labels, prompts, count = self._conditions(class_labels, prompts, num_images)
        sampling = self._sampling(num_inference_steps, guidance_scale)
        decoder = SampleDecoder(self.generator, self.fae, sampling, batch_size, device=self.device)
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item()) if seed is None else int(seed)
        # inference mode, except for a flow's denoising step: it takes the gradient of the flow's
        # log-likelihood (autograd inside; SampleDecoder's no_grad still keeps the rest untraced)
        needs_autograd = bool(getattr(sampling, "denoise", False))
        with torch.inference_mode(not needs_autograd), self._autocast():
            batch = decoder.all(range(count), labels, seed=seed, progress=progress, desc="images", prompts=prompts)
        images = _convert(batch.images, output_type)
        return FAEPipelineOutput(images) if return_dict else (images,)

    # ---- arguments ------------------------------------------------------------------------------

    def _conditions(self, class_labels: int | Sequence[int] | None, prompts: str | Sequence[str] | None,
                    num_images: int | None) -> tuple[torch.Tensor | None, list[str] | None, int]:
        """(labels or None, prompts or None, number of images), refusing the wrong argument for
        this generator's kind with a message naming the right one."""
        if num_images is not None and num_images < 1:
            raise ConfigError(f"num_images must be >= 1, got {num_images}")
        if isinstance(self.generator, TextToImageGenerator):
            prompts = self._prompts(class_labels, prompts, num_images)
            return None, prompts, len(prompts)
        if prompts is not None:
            raise ConfigError("prompts= needs a text-to-image generator; this one is "
                              + ("unconditional: pass num_images=N" if self._unconditional
                                 else "class-conditional: pass class_labels=[...]"))
        if self._unconditional:
            if class_labels is not None:
                raise ConfigError("class_labels= does not apply: this generator is unconditional; pass num_images=N")
            return None, None, _required_count(num_images, "this generator is unconditional: pass num_images=N")
        if class_labels is None:
            return None, None, _required_count(num_images, "pass class_labels=[...] (or num_images=N to "
                                                           "cycle through every class)")
        labels = _as_list(class_labels)
        if num_images is not None and num_images != len(labels):
            raise ConfigError(f"num_images={num_images} disagrees with the {len(labels)} class_labels; pass one")
        return self._checked_labels(labels), None, len(labels)

    def _prompts(self, class_labels, prompts, num_images) -> list[str]:
        """The prompts of a text-to-image call (one image each)."""
        if class_labels is not None:
            raise ConfigError("class_labels= does not apply: this generator is text-to-image; pass prompts=[...]")
        if prompts is None:
            raise ConfigError("this generator is text-to-image: pass prompts=[...] (one image per prompt)")
        prompts = [str(p) for p in _as_list(prompts)]
        if not prompts or (num_images is not None and num_images != len(prompts)):
            raise ConfigError(f"prompts= must hold one prompt per image, got {len(prompts)} prompts"
                              + (f" for num_images={num_images}" if num_images is not None else ""))
        return prompts

    @property
    def _unconditional(self) -> bool:
        return self.generator.config.num_classes == 0

    def _checked_labels(self, labels: list) -> torch.Tensor:
        """class_labels -> int64 [N], each in [0, num_classes)."""
        n = self.generator.config.num_classes
        if not labels or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in labels):
            raise ConfigError(f"class_labels= must be a non-empty list of ints, got {labels!r}")
        bad = [int(c) for c in labels if not 0 <= int(c) < n]
        if bad:
            raise ConfigError(f"class_labels {bad} are outside the generator's classes [0, {n - 1}]")
        return torch.tensor([int(c) for c in labels], dtype=torch.long)

    def _sampling(self, num_inference_steps: int | None, guidance_scale: float | None):
        """The generator's stored sampler settings with the call's steps / guidance applied."""
        overrides: dict[str, Any] = {}
        flow = isinstance(self.generator.sampling, FlowSamplerConfig)
        if num_inference_steps is not None:
            if flow:
                raise ConfigError("num_inference_steps= does not apply to a flow (STARFlow) generator: it "
                                  "samples token by token; leave it None")
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                    or num_inference_steps < 1:
                raise ConfigError(f"num_inference_steps= must be an int >= 1, got {num_inference_steps!r}")
            overrides["steps"] = num_inference_steps
        if guidance_scale is not None:
            if not guidance_scale > 0:
                raise ConfigError(f"guidance_scale= must be > 0 (1 = no guidance), got {guidance_scale}")
            overrides["cfg_scale"] = float(guidance_scale)
            if not flow:
                overrides["cfg_schedule"] = []  # one scale replaces a stored piecewise schedule
        return sampler_config(self.generator, overrides)  # SampleDecoder validates it

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.torch_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.torch_dtype)


def _default_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_list(values) -> list:
    """A single label / prompt, or a sequence (list, tuple, tensor, array) of them -> a list."""
    if values is None:
        return []
    if isinstance(values, (str, int, np.integer)):
        return [values]
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return values.reshape(-1).tolist()
    return list(values)


def _required_count(num_images: int | None, message: str) -> int:
    if num_images is None:
        raise ConfigError(message)
    return int(num_images)


def _convert(images: torch.Tensor, output_type: OutputType) -> Images:
    """uint8 [N, C, H, W] on the CPU -> the requested output (see :class:`FAEPipelineOutput`)."""
    if output_type == "pil":
        nhwc = images.permute(0, 2, 3, 1).numpy()  # [N, H, W, C] uint8
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in nhwc]
    unit = images.float() / 255.0  # [N, C, H, W] in [0, 1]
    if output_type == "np":
        return unit.permute(0, 2, 3, 1).contiguous().numpy()
    return unit
