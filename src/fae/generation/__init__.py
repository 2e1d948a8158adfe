"""Latent generation: the diffusion transformer, flow transport and samplers; the STARFlow
normalizing flow (``flow``); exported generators of both kinds (``load_generator``).

This package sees only latents; it never imports backbones or the autoencoder.
"""
from fae.generation.config import SIZES, STYLES, GeneratorConfig
from fae.generation.flow import STARFlow, build_flow
from fae.generation.flow_config import FLOW_SIZES, FlowConfig, FlowSamplerConfig
from fae.generation.flow_generator import FlowGenerator, load_generator
from fae.generation.generator import Generator
from fae.generation.model import DiffusionTransformer, build_generator
from fae.generation.samplers import GuidedVelocity, SamplerConfig, integrate
from fae.generation.transport import Transport, TransportConfig, shift_time

__all__ = ["SIZES", "STYLES", "GeneratorConfig", "Generator", "DiffusionTransformer", "build_generator",
           "GuidedVelocity", "SamplerConfig", "integrate", "Transport", "TransportConfig", "shift_time",
           "STARFlow", "build_flow", "FLOW_SIZES", "FlowConfig", "FlowSamplerConfig", "FlowGenerator",
           "load_generator"]
