"""Perceptual losses for the pixel decoder: LPIPS (VGG16) or backbone feature matching.

``perceptual: lpips`` -- LPIPS v0.1 (Zhang et al. 2018) on a VGG16 written here in plain torch.
No weights ship with FAE and nothing is downloaded; supply two local files:

    loss.lpips_vgg_path:   a torchvision-format VGG16 state dict, e.g. ``vgg16-397923af.pth``
                           (keys ``features.{0,2,5,...,28}.{weight,bias}``; classifier keys are ignored)
    loss.lpips_heads_path: the LPIPS linear heads, ``lpips/weights/v0.1/vgg.pth`` from the ``lpips``
                           package (keys ``lin{0..4}.model.1.weight``, shapes [1, C, 1, 1])

e.g. on a machine with internet: ``pip download lpips torchvision`` and copy
``lpips/weights/v0.1/vgg.pth`` out of the lpips wheel, and
``torch.hub.load_state_dict_from_url("https://download.pytorch.org/models/vgg16-397923af.pth")``.
Then ``fae train pixel-decoder ... loss.perceptual=lpips loss.lpips_vgg_path=/w/vgg16-397923af.pth
loss.lpips_heads_path=/w/vgg.pth``.

``perceptual: backbone`` -- offline fallback: mean squared distance between the LayerNorm-ed
tokens of the frozen backbone for the decoded and the original image (gradients flow through the
frozen backbone into the decoder).

``perceptual: efficientnet`` -- offline and cheap: LPIPS's recipe without learned heads (unit-normalise
each position's channels, squared difference, spatial mean, sum over taps) on the early blocks of the
frozen ImageNet EfficientNet-Lite0 from PyPI, at a small input size (``loss.perceptual_resolution``,
default 32 px: Fashion-MNIST's 28 px barely resized). Taps after blocks 0, 2 and 4 (strides 2, 4, 8:
16, 24 and 40 channels). Measured on the CPU demo (ViT decoder, 500 steps): +7 points of classifier
accuracy on the reconstructions for +3% step time.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fae.backbones import load_backbone
from fae.backbones.weights import RANDOM_WEIGHTS
from fae.errors import WeightsNotFoundError

# VGG16 "D" configuration; "M" = 2x2 max-pool. Layer indices match torchvision's ``features``.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS ScalingLayer: inputs in [-1, 1] are mapped to the ImageNet statistics VGG was trained on.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """The convolutional part of VGG16 with torchvision's module indices (up to relu5_3)."""
    layers: list[nn.Module] = []
    c_in = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = item
    return nn.Sequential(*layers)


# The two LPIPS files, by config key: (what it is, the command that fetches it on a machine with
# network; the paths are the shipped configs' weights/lpips/...).
LPIPS_FILES = {
    "loss.lpips_vgg_path": ("the VGG16 weights", "python -c \"import torch; torch.hub.load_state_dict_from_url("
                            "'https://download.pytorch.org/models/vgg16-397923af.pth', model_dir='weights/lpips')\""),
    "loss.lpips_heads_path": ("the LPIPS linear heads", "pip download lpips --no-deps -d /tmp/lpips && unzip -j "
                              "/tmp/lpips/lpips-*.whl lpips/weights/v0.1/vgg.pth -d weights/lpips"),
}


def check_lpips_file(path: str | None, key: str) -> Path:
    """The LPIPS file of config key ``key`` (see :data:`LPIPS_FILES`) is a local file; checked
    without reading it (a check before compute). WeightsNotFoundError naming the key otherwise."""
    what = LPIPS_FILES[key][0]
    if not path:
        raise WeightsNotFoundError(f"perceptual=lpips needs {what}: set config key '{key}' to a local "
                                   f"file (see fae.autoencoder.perceptual for where to get it), or use "
                                   f"loss.perceptual=backbone which works offline")
    if not Path(path).is_file():
        state = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise WeightsNotFoundError(f"config key '{key}': file '{path}' ({what}) {state}")
    return Path(path)


def _load_file(path: str | None, key: str) -> dict[str, torch.Tensor]:
    check_lpips_file(path, key)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of a corrupt or foreign file
        raise WeightsNotFoundError(f"config key '{key}': cannot read '{path}' as a torch state dict: {e}") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Normalise each spatial feature vector to unit length over channels (LPIPS)."""
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS distance (v0.1, VGG16): images [B, C, H, W] in [-1, 1] -> [B] distances.

    Args:
        vgg_path: torchvision VGG16 state dict file; ``"random"`` (with ``heads_path`` "random" or
            unset) keeps the random initialisation: the same compute for plans and rehearsals.
        heads_path: LPIPS linear-head file.
    """

    def __init__(self, vgg_path: str | None, heads_path: str | None):
        super().__init__()
        self.features = vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        if vgg_path != RANDOM_WEIGHTS or heads_path not in (None, RANDOM_WEIGHTS):
            self._load(vgg_path, heads_path)
        self.requires_grad_(False).eval()

    def _load(self, vgg_path: str | None, heads_path: str | None) -> None:
        vgg = _load_file(vgg_path, "loss.lpips_vgg_path")
        feats = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
        feats = {k: v for k, v in feats.items() if int(k.split(".")[0]) < len(self.features)}
        try:
            self.features.load_state_dict(feats)
        except RuntimeError as e:
            raise WeightsNotFoundError(f"'{vgg_path}' is not a torchvision VGG16 state dict: {e}") from None
        heads = _load_file(heads_path, "loss.lpips_heads_path")
        for i, head in enumerate(self.heads):
            weight = heads.get(f"lin{i}.model.1.weight", heads.get(f"lin{i}.weight"))
            if weight is None or weight.shape != head.weight.shape:
                raise WeightsNotFoundError(f"'{heads_path}' lacks LPIPS head lin{i} of shape "
                                           f"{list(head.weight.shape)} (expected lpips v0.1 vgg.pth)")
            head.weight.data.copy_(weight)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_TAPS:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 1:  # grayscale -> RGB
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        taps_a = self._taps((a.float() - self.shift) / self.scale)
        taps_b = self._taps((b.float() - self.shift) / self.scale)
        total = 0.0
        for head, fa, fb in zip(self.heads, taps_a, taps_b):
            diff = (_unit_channels(fa) - _unit_channels(fb)).square()  # [B, C, h, w]
            total = total + head(diff).mean(dim=(1, 2, 3))  # [B]
        return total


class BackboneFeatureLoss(nn.Module):
    """Feature matching on the frozen backbone: mean ||LN(f(fake)) - LN(f(real))||^2 / D.

    Args:
        backbone: a frozen ``fae.backbones`` Backbone (its ``preprocess`` + ``forward_features`` are
            called directly, outside its ``inference_mode`` forward, so gradients reach the images).
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.backbone.preprocess((images.float() + 1.0) * 0.5)  # [-1, 1] -> [0, 1]
        tokens = self.backbone.forward_features(pixels).float()  # [B, N, D]
        return F.layer_norm(tokens, tokens.shape[-1:])

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self._tokens(real)
        return (self._tokens(fake) - target).square().mean(dim=(1, 2))  # [B]


class EfficientNetDistance(nn.Module):
    """LPIPS-style distance on the early blocks of EfficientNet-Lite0: images in [-1, 1] -> [B].

    Args:
        resolution: input side the images are resized to (bilinear) before the network.
        taps: indices of the MBConv blocks whose outputs are compared (the network stops after the last).
    """

    def __init__(self, resolution: int = 32, taps: tuple[int, ...] = (0, 2, 4)):
        super().__init__()
        backbone = load_backbone("efficientnet-lite0", resolution=resolution)
        net = backbone.net
        self.resolution, self.taps = resolution, taps
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[:max(taps) + 1])
        mean, std = backbone.info.mean, backbone.info.std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(images.float(), size=self.resolution, mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = self.stem(((x + 1.0) * 0.5 - self.mean) / self.std)  # [B, 32, S/2, S/2]
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=None)
            if i in self.taps:
                out.append(_unit_channels(x, eps=1e-6))
        return out

    def train(self, mode: bool = True) -> "EfficientNetDistance":
        return super().train(False)  # frozen BatchNorm statistics, always

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self._taps(real)
        return sum((f - t).square().sum(dim=1).mean(dim=(1, 2)) for f, t in zip(self._taps(fake), target))  # [B]


def build_perceptual(kind: str, backbone: nn.Module | None = None, vgg_path: str | None = None,
                     heads_path: str | None = None, resolution: int = 32) -> nn.Module | None:
    """The perceptual module named by ``loss.perceptual`` (None for "none")."""
    if kind == "efficientnet":
        return EfficientNetDistance(resolution)
    if kind == "lpips":
        return LPIPS(vgg_path, heads_path)
    if kind == "backbone":
        if backbone is None:
            raise ValueError("perceptual=backbone needs the frozen backbone")
        return BackboneFeatureLoss(backbone)
    return None
