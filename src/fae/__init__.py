"""FAE: adapt a frozen pretrained visual encoder into a compact latent space for generation.

Layers (lower never imports higher): nn -> backbones -> autoencoder / generation -> data ->
training -> evaluation -> cli.
"""
__version__ = "0.1.0"

from fae.errors import FAEError  # noqa: F401
