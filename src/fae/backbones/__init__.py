"""Frozen pretrained visual encoders as token extractors: images -> patch tokens [B, N, D]."""
from fae.backbones.base import Backbone, BackboneInfo
from fae.backbones.config import BackboneConfig
from fae.backbones.registry import get_info, list_backbones, load_backbone
from fae.backbones.token_cache import TokenCache, TokenDataset

__all__ = ["Backbone", "BackboneConfig", "BackboneInfo", "TokenCache", "TokenDataset", "get_info",
           "list_backbones", "load_backbone"]
