"""Frozen pretrained visual encoders as token extractors: images -> patch tokens [B, N, D]."""
from fae.backbones.base import Backbone, BackboneInfo
from fae.backbones.registry import get_info, list_backbones, load_backbone

__all__ = ["Backbone", "BackboneInfo", "get_info", "list_backbones", "load_backbone"]
