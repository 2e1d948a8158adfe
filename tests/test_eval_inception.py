"""The FID Inception path: resize convention, shapes, determinism and sanity values on real photos."""
import numpy as np
import pytest
import torch
from skimage import data

from fae.evaluation.fid import fid_from_features
from fae.evaluation.inception import (HAS_LOGITS, POOL_DIM, SPATIAL_DIM, load_inception, resize_tf_bilinear,
                                      to_inception_input)

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
