from fae.backbones.base import Backbone, BackboneInfo  # noqa: F401
