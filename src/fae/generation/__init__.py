"""Latent generation: the diffusion transformer, flow transport and samplers; the STARFlow
normalizing flow (``flow``); the text-to-image MMDiT (``mmdit``); exported generators of every kind (``load_generator``).

This package sees only latents; it never imports backbones or the autoencoder.
"""
from fae.generation.config import SIZES, STYLES, GeneratorConfig
from fae.generation.flow import STARFlow, build_flow
from fae.generation.flow_config import FLOW_SIZES, FlowConfig, FlowSamplerConfig
from fae.generation.flow_generator import FlowGenerator, load_generator
from fae.generation.generator import Generator
from fae.generation.model import DiffusionTransformer, build_generator
from fae.generation.samplers import GuidedVelocity, SamplerConfig, integrate
from fae.generation.mmdit import MMDiT, build_mmdit
from fae.generation.mmdit_config import MMDIT_SIZES, MMDiTConfig
from fae.generation.t2i_generator import TextToImageGenerator
from fae.generation.conditioning import TextCondition
from fae.generation.transport import Transport, TransportConfig, shift_time

__all__ = ["SIZES", "STYLES", "GeneratorConfig", "Generator", "DiffusionTransformer", "build_generator",
           "GuidedVelocity", "SamplerConfig", "integrate", "Transport", "TransportConfig", "shift_time",
           "STARFlow", "build_flow", "FLOW_SIZES", "FlowConfig", "FlowSamplerConfig", "FlowGenerator",
           "load_generator", "MMDiT", "build_mmdit", "MMDIT_SIZES", "MMDiTConfig", "TextToImageGenerator",
           "TextCondition"]
