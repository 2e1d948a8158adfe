"""InceptionV3 with its 1008-class head, for the Inception Score (written here; no torchvision).

The ADM suite reports IS from the softmax of TensorFlow's ``inception-2015-12-05`` graph (1008
classes, 10 splits of 5,000 samples). The TorchScript of :mod:`fae.evaluation.inception` stops at
pool_3, so IS needs this network and the standard PyTorch port of that graph's weights: the state
dict ``pt_inception-2015-12-05-*.pth`` used by common PyTorch FID tools, read from a local file
(``inception_weights`` in the eval config, or ``$FAE_INCEPTION_WEIGHTS``; nothing is downloaded).

The architecture lives in :mod:`fae.evaluation.inception_net` (shared with the FID fast path);
its module names and shapes are the ones that state dict uses, so it loads key for key, and
:func:`load_state` checks every key and shape first and names each mismatch. Outputs follow the
TorchScript path's convention exactly (the same input rule,
:func:`fae.evaluation.inception.to_inception_input`), plus ``logits`` [B, 1008].
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from fae.errors import WeightsNotFoundError
from fae.evaluation.inception import load_inception, to_inception_input
from fae.evaluation.inception_net import NUM_LOGITS, InceptionV3  # noqa: F401 (NUM_LOGITS: re-exported)

WEIGHTS_ENV = "FAE_INCEPTION_WEIGHTS"
OPTIONAL_KEYS = ("num_batches_tracked",)  # BatchNorm counters: unused in eval, absent in some ports


def weights_path(path: str | Path | None = None) -> Path | None:
    """The 1008-class weights file: ``path``, else ``$FAE_INCEPTION_WEIGHTS``, else None (no IS)."""
    chosen = path or os.environ.get(WEIGHTS_ENV)
    if not chosen:
        return None
    chosen = Path(chosen)
    if not chosen.is_file():
        source = "config key 'inception_weights'" if path else f"${WEIGHTS_ENV}"
        raise WeightsNotFoundError(f"{source} names '{chosen}', which is not a file (expected the "
                                   "pt_inception-2015-12-05 state dict, e.g. pt_inception-2015-12-05-6726825d.pth)")
    return chosen


def check_state(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Every key of ``model`` present with its shape, and no other key (BatchNorm counters optional)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    optional = {k for k in expected if k.rsplit(".", 1)[-1] in OPTIONAL_KEYS}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
                   for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    problems = [f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else "",
                f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
                if unexpected else "",
                f"wrong shapes: {', '.join(wrong[:8])}" if wrong else ""]
    problems = [p for p in problems if p]
    if problems:
        raise WeightsNotFoundError(f"'{source}' is not the 1008-class pt_inception-2015-12-05 state dict: "
                                   + "; ".join(problems))


def load_state(model: InceptionV3, path: str | Path) -> InceptionV3:
    """Load ``path`` into ``model`` after :func:`check_state`; returns it frozen in eval mode."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as e:
        raise WeightsNotFoundError(f"cannot read the Inception weights '{path}': {e}") from None
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"'{path}' holds a {type(state).__name__}, not a state dict")
    check_state(state, model, str(path))
    model.load_state_dict(state, strict=False)  # strictness checked above, counters optional
    return model.requires_grad_(False).eval()


class InceptionWithLogits(nn.Module):
    """The :class:`InceptionV3` above behind the TorchScript path's interface, plus ``logits``.

    Args:
        path: the 1008-class state dict file.
        device: where to run the network.
        channels_last: use the channels-last memory format.
    """

    has_logits = True

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", channels_last: bool = True):
        super().__init__()
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.net = load_state(InceptionV3(), path).to(self.device)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8-valued [B, C, H, W] -> {"pool": [B, 2048], "spatial": [B, 2023], "logits": [B, 1008]}."""
        x = to_inception_input(images.to(self.device))  # [B, 3, 299, 299]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return {key: value.float() for key, value in self.net(x).items()}


def load_scoring_network(weights: str | Path | None = None, device: str | torch.device = "cpu",
                         channels_last: bool = True) -> nn.Module:
    """The network ``fae eval fid`` scores with: this InceptionV3 (pool, spatial and logits, so IS
    too) when a 1008-class weights file is named (``weights`` or ``$FAE_INCEPTION_WEIGHTS``), else
    the shared TorchScript of :func:`fae.evaluation.inception.load_inception` (no logits, no IS)."""
    path = weights_path(weights)
    if path is None:
        return load_inception(device=device, channels_last=channels_last)
    return InceptionWithLogits(path, device=device, channels_last=channels_last)
