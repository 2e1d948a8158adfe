"""Frozen text encoders for text-to-image generation: a registry like ``fae.backbones``'.

``load_text_encoder(name, weights=...)`` returns a frozen :class:`TextEncoder` whose
``encode(captions)`` gives :class:`TextEmbeddings` (token embeddings, mask, pooled vector); it does
its own tokenisation. ``get_text_info(name)`` needs no weights (``--dry-run``).
"""
from fae.text.encoders import CaptionRules, TextEmbeddings, TextEncoder
from fae.text.registry import (TextEncoderConfig, TextEncoderInfo, get_text_info, list_text_encoders,
                               load_text_encoder)

__all__ = ["CaptionRules", "TextEmbeddings", "TextEncoder", "TextEncoderConfig", "TextEncoderInfo", "get_text_info",
           "list_text_encoders", "load_text_encoder"]
