"""The FID Inception path: resize convention, shapes, determinism and sanity values on real photos;
the fast path (folded eager network) against the plain TorchScript."""
import numpy as np
import pytest
import torch
from skimage import data

from fae.errors import ConfigError
from fae.evaluation.fid import fid_from_features
from fae.evaluation.inception import (HAS_LOGITS, PATH_ENV, POOL_DIM, SPATIAL_DIM, InceptionFeatures, load_inception,
                                      resize_tf_bilinear, to_inception_input)
from fae.evaluation.inception_net import ConvBN, InceptionV3

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _crops(name: str, count: int = 4, size: int = 128, stride: int = 16) -> list[np.ndarray]:
    """``count`` crops of a scikit-image photo, each shifted 16 px diagonally from the last (uint8 HWC)."""
    image = getattr(data, name)()
    h, w = image.shape[:2]
    y0, x0 = (h - size - stride * (count - 1)) // 2, (w - size - stride * (count - 1)) // 2
    return [image[y0 + i * stride: y0 + i * stride + size, x0 + i * stride: x0 + i * stride + size]
            for i in range(count)]


def _nchw(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # [B, 3, H, W] uint8


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return load_inception()


@pytest.fixture(scope="module")
def features(net):
    """Pool features of 16 real crops (4 per photo) and 8 uniform-noise images, in one pass each."""
    real = _nchw([crop for name in PHOTOS for crop in _crops(name)])  # [16, 3, 128, 128]
    noise = torch.randint(0, 256, (8, 3, 128, 128), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    return net(real)["pool"].double().numpy(), net(noise)["pool"].double().numpy()


def test_resize_is_tf_legacy_bilinear():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)  # columns 0, 1, 2, 3
    up = resize_tf_bilinear(x, size=8)  # output column j samples input coordinate j * 4 / 8
    assert up[0, 0, 0].tolist() == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5, 3, 3])  # clamped at the edge
    same = torch.rand(1, 3, 299, 299)
    assert resize_tf_bilinear(same) is same
    down = resize_tf_bilinear(torch.arange(598.0).view(1, 1, 1, 598).expand(1, 1, 2, 598))
    assert down.shape == (1, 1, 299, 299) and down[0, 0, 0, :3].tolist() == [0, 2, 4]  # i * 598 / 299


def test_input_scaling_is_tf_fid():
    x = to_inception_input(torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 1, 3, 3))
    assert x.shape == (1, 3, 299, 299)  # grayscale repeated to RGB, resized to 299
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, -1] == pytest.approx(127 / 128)


def test_shapes_determinism_and_no_logits(net):
    images = _nchw(_crops("astronaut", count=2, size=96))
    first, second = net(images), net(images.clone())
    assert first["pool"].shape == (2, POOL_DIM) and first["spatial"].shape == (2, SPATIAL_DIM)
    assert torch.equal(first["pool"], second["pool"]) and torch.equal(first["spatial"], second["spatial"])
    assert (first["spatial"] >= 0).all()  # mixed_6/conv is taken after its ReLU
    assert not HAS_LOGITS
    same_twice = net(torch.cat([images[:1], images[:1]]))["pool"]
    assert torch.equal(same_twice[0], same_twice[1])  # batch composition does not change features
    gray = net(images[:1, :1])["pool"]  # one channel is repeated to RGB
    assert torch.allclose(gray, net(images[:1, :1].expand(1, 3, -1, -1))["pool"])


def test_photos_and_noise_give_very_different_features(features):
    real, noise = features
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    same_photo = cos(real[0], real[1])  # two crops of the astronaut, 16 px apart
    photo_vs_noise = cos(real[0], noise[0])
    assert same_photo > 0.8 and photo_vs_noise < 0.5
    assert cos(noise[0], noise[1]) > 0.9  # noise images all look alike to Inception


def test_fid_of_real_halves_far_below_real_vs_noise(features):
    real, noise = features
    half_a, half_b = real[0::2], real[1::2]  # disjoint crops, each half covers all four photos
    real_fid = fid_from_features(half_a, half_b)
    noise_fid = fid_from_features(half_a, noise)
    assert real_fid < 0.25 * noise_fid
    assert noise_fid > 200  # far apart on the usual FID scale


def _relative_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the agreement rule every FID comparison relies on."""
    return float((a - b).abs().max() / b.abs().max())


def test_fast_path_features_equal_the_plain_torchscript(net):
    images = torch.cat([_nchw(_crops("coffee", count=2, size=96)),
                        torch.randint(0, 256, (2, 3, 96, 96), generator=torch.Generator().manual_seed(1),
                                      dtype=torch.uint8)])  # [4, 3, 96, 96]: two photo crops, two noise
    plain = load_inception(fast=False)
    assert net.fast and isinstance(net.network, InceptionV3)  # the default is the fast path
    assert not plain.fast and isinstance(plain.network, torch.jit.ScriptModule)
    fast_out, plain_out = net(images), plain(images)
    assert _relative_deviation(fast_out["pool"], plain_out["pool"]) < 1e-4
    assert _relative_deviation(fast_out["spatial"], plain_out["spatial"]) < 1e-4
    assert fast_out["pool"].dtype == plain_out["pool"].dtype == torch.float32


def _tf_legacy_resize_numpy(image: np.ndarray, size: int) -> np.ndarray:
    """Reference resize, written independently: output i reads input i * n / size, bilinear, clamped."""
    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(size) * (n / size)
        lo = np.minimum(np.floor(src).astype(int), n - 1)
        return lo, np.minimum(lo + 1, n - 1), src - lo
    (r0, r1, fr), (c0, c1, fc) = axis(image.shape[-2]), axis(image.shape[-1])
    rows = image[..., r0, :] * (1 - fr)[:, None] + image[..., r1, :] * fr[:, None]  # [..., size, W]
    return rows[..., c0] * (1 - fc) + rows[..., c1] * fc  # [..., size, size]


def _recording(name: str, network_call, seen: dict):
    """``network_call`` (an InceptionFeatures method taking the network input) that also keeps its input."""
    def record(self, x: torch.Tensor):
        seen[name] = x.clone()
        return network_call(self, x)
    return record


def test_both_paths_get_the_unchanged_tf_fid_input(monkeypatch):
    images = torch.randint(0, 256, (2, 3, 256, 256), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    expected = (_tf_legacy_resize_numpy(images.double().numpy(), 299) - 128.0) / 128.0  # TF-FID scale
    seen = {}
    for name in ("_fast", "_plain"):
        monkeypatch.setattr(InceptionFeatures, name, _recording(name, getattr(InceptionFeatures, name), seen))
    load_inception(fast=True)(images)
    load_inception(fast=False)(images)
    assert torch.equal(seen["_fast"], seen["_plain"])  # the same tensor reaches both networks
    assert seen["_fast"].is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(seen["_fast"].double().numpy(), expected, rtol=0, atol=2e-6)
    assert float(seen["_fast"].min()) >= -1.0 and float(seen["_fast"].max()) <= 127 / 128


def test_folding_batch_norm_keeps_the_unit_output():
    torch.manual_seed(0)
    unit = ConvBN(5, 6, (3, 1), stride=2, padding=(1, 0))
    unit.bn.weight.data.uniform_(0.5, 2.0)  # a scale, which the TorchScript's TF batch norm lacks
    unit.bn.bias.data.normal_()
    unit.bn.running_mean.normal_()
    unit.bn.running_var.uniform_(0.1, 3.0)
    unit.eval()
    x = torch.randn(2, 5, 9, 7)
    before = unit(x)
    unit.fold_batch_norm()
    assert isinstance(unit.bn, torch.nn.Identity) and unit.conv.bias is not None
    torch.testing.assert_close(unit(x), before, rtol=1e-5, atol=1e-5)
    assert (before == 0).any() and (before > 0).any()  # the ReLU after the fold is exercised
    unit.fold_batch_norm()  # folding twice changes nothing
    torch.testing.assert_close(unit(x), before, rtol=1e-5, atol=1e-5)


def test_the_environment_picks_the_path(monkeypatch):
    monkeypatch.setenv(PATH_ENV, "plain")
    assert not load_inception().fast
    assert load_inception(fast=True).fast  # an explicit argument wins
    monkeypatch.setenv(PATH_ENV, "fast")
    assert load_inception().fast
    monkeypatch.setenv(PATH_ENV, "turbo")
    with pytest.raises(ConfigError, match=f"\\${PATH_ENV}='turbo' is not one of fast, plain"):
        load_inception()
