"""InceptionV3 with its 1008-class head, for the Inception Score (written here; no torchvision).

The ADM suite reports IS from the softmax of TensorFlow's ``inception-2015-12-05`` graph (1008
classes, 10 splits of 5,000 samples). The TorchScript of :mod:`fae.evaluation.inception` stops at
pool_3, so IS needs this network and the standard PyTorch port of that graph's weights: the state
dict ``pt_inception-2015-12-05-*.pth`` used by common PyTorch FID tools, read from a local file
(``inception_weights`` in the eval config, or ``$FAE_INCEPTION_WEIGHTS``; nothing is downloaded).

Layout. Module names and shapes are the ones that state dict uses (torchvision's ``Inception3``
naming with ``fc`` = 2048 -> 1008), so it loads key for key; :func:`load_state` checks every key
and shape first and names each mismatch. The blocks are the TF graph's FID variants: the average
pools of the A, C and first E block do not count padding, and the last E block max-pools its pool
branch. Every conv is conv (no bias) -> batch norm (eps 1e-3) -> ReLU, as in TF.

Outputs follow the TorchScript path's convention exactly (the same input rule,
:func:`fae.evaluation.inception.to_inception_input`): ``pool`` = the 2048-d pool_3 features
(``Mixed_7c`` averaged over its 8x8 grid), ``spatial`` = the first 7 channels of ``Mixed_6d``'s 1x1
branch (TF's ``mixed_6/conv``) flattened NHWC (2023-d, sFID), ``logits`` = ``fc(pool)`` [B, 1008].
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fae.errors import WeightsNotFoundError
from fae.evaluation.inception import POOL_DIM, SPATIAL_CHANNELS, SPATIAL_DIM, load_inception, to_inception_input

NUM_LOGITS = 1008  # the TF graph's softmax: 1000 ImageNet classes + 8 unused
WEIGHTS_ENV = "FAE_INCEPTION_WEIGHTS"
OPTIONAL_KEYS = ("num_batches_tracked",)  # BatchNorm counters: unused in eval, absent in some ports


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU (torchvision's ``BasicConv2d`` names)."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average pool, stride 1, padding not counted (the TF graph's FID blocks)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35 block (TF mixed .. mixed_2): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class BlockB(nn.Module):
    """35 -> 17 reduction (TF mixed_3): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convs (TF mixed_4 .. mixed_7)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = ConvBN(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = ConvBN(c7, 192, row[0], padding=row[1])
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class BlockD(nn.Module):
    """17 -> 8 reduction (TF mixed_8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 convs (TF mixed_9, mixed_10); ``max_pool`` in the last one."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """TF-FID InceptionV3 with its 1008-class head: TF-scaled [B, 3, 299, 299] -> pool / spatial / logits."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 64, 147, 147]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))  # [B, 192, 71, 71]
        x = F.max_pool2d(x, 3, stride=2)  # [B, 192, 35, 35]
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))  # [B, 768, 17, 17]
        x = self.Mixed_6c(self.Mixed_6b(x))
        spatial = _spatial(self.Mixed_6d.branch1x1(x))  # TF mixed_6/conv -> [B, 2023]
        x = self.Mixed_7a(self.Mixed_6e(self.Mixed_6d(x)))  # [B, 1280, 8, 8]
        pool = self.Mixed_7c(self.Mixed_7b(x)).mean(dim=(2, 3))  # pool_3: [B, 2048]
        return {"pool": pool, "spatial": spatial, "logits": self.fc(pool)}  # logits [B, 1008]


def _spatial(mixed_6_conv: torch.Tensor) -> torch.Tensor:
    """[B, 192, 17, 17] -> first 7 channels flattened in NHWC order [B, 2023] (ADM's sFID rule)."""
    x = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # [B, 17, 17, 7]
    return x.reshape(x.shape[0], SPATIAL_DIM)


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
