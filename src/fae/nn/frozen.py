"""A module that is never trained: the frozen backbones and text encoders inherit it."""
from __future__ import annotations

from torch import nn


class FrozenModule(nn.Module):
    """``freeze()`` = eval mode and no gradients; ``train()`` keeps it in eval mode even when a
    parent module is switched to train mode (BatchNorm statistics, dropout stay as pretrained)."""

    def freeze(self):
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True):
        return super().train(False)
