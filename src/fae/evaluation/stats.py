"""Streamed feature statistics and ADM-format ``.npz`` files (sample batches, reference statistics).

ADM sample batch (what ``fae sample`` writes and guided-diffusion's ``evaluator.py`` reads):
``arr_0`` uint8 ``[N, H, W, 3]`` (NHWC) plus optional labels as ``arr_1`` or ``labels``.
ADM reference batch (e.g. ``VIRTUAL_imagenet256_labeled.npz``): ``arr_0`` images and precomputed
``mu``/``sigma`` (pool_3, 2048-d) and ``mu_s``/``sigma_s`` (mixed_6/conv spatial, 2023-d).
A statistics-only file (what ``fae eval ref-stats`` writes) holds those four arrays plus ``count``
and, optionally, ``pool_features`` (needed for KID and precision/recall).
A sample folder (what ``fae sample --png DIR`` writes) is read as the same image set: its images
(PNG, JPEG, ...) in file-name order, all of one size (:class:`FolderImages`).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fae import distributed as dist
from fae.data.imagefolder import check_one_size, list_images, load_rgb
from fae.data.transforms import to_chw_uint8
from fae.errors import DataError
from fae.images import nhwc_to_nchw
from fae.io import atomic_write


class StreamingStats:
    """Running mean and covariance of feature batches (float64 sums, exact up to rounding).

    Args:
        dim: feature width.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.total = np.zeros(dim, dtype=np.float64)  # sum x       [D]
        self.outer = np.zeros((dim, dim), dtype=np.float64)  # sum x x^T   [D, D]

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        x = _as_numpy(features).astype(np.float64).reshape(-1, self.dim)  # [B, D]
        self.count += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def all_reduce(self) -> StreamingStats:
        """Sum every rank's accumulators into this one (no-op in a single process); returns self."""
        count, total, outer = dist.all_reduce_sums(torch.tensor([float(self.count)], dtype=torch.float64),
                                                   torch.from_numpy(self.total), torch.from_numpy(self.outer))
        self.count = int(round(float(count[0])))
        self.total, self.outer = total.numpy(), outer.numpy()
        return self

    def merge(self, other: StreamingStats) -> None:
        """Add another accumulator's sums (e.g. from another rank)."""
        self.count += other.count
        self.total += other.total
        self.outer += other.outer

    def mean(self) -> np.ndarray:
        self._check()
        return self.total / self.count

    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by N - 1, like ``np.cov``)."""
        self._check()
        if self.count < 2:
            raise DataError(f"covariance needs at least 2 feature vectors, got {self.count}")
        mu = self.mean()
        return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)

    def _check(self) -> None:
        if self.count == 0:
            raise DataError("no features were accumulated: the image set is empty")


@dataclass
class InceptionStats:
    """What FID/sFID (and, with ``pool_features``, KID and precision/recall) need of one image set."""

    mu: np.ndarray  # [2048]
    sigma: np.ndarray  # [2048, 2048]
    mu_s: np.ndarray | None = None  # [2023] spatial (sFID)
    sigma_s: np.ndarray | None = None  # [2023, 2023]
    count: int = 0  # images the statistics were computed from (0: unknown, e.g. ADM files)
    pool_features: np.ndarray | None = None  # [N, 2048] float32, for KID / precision-recall
    logits: np.ndarray | None = None  # [N, 1008] of the classifier head (Inception Score); not saved

    def save(self, path: str | Path, with_features: bool = True) -> Path:
        arrays = {"mu": self.mu, "sigma": self.sigma, "count": np.int64(self.count)}
        if self.mu_s is not None:
            arrays.update(mu_s=self.mu_s, sigma_s=self.sigma_s)
        if with_features and self.pool_features is not None:
            arrays["pool_features"] = self.pool_features.astype(np.float32)
        return atomic_write(path, lambda f: np.savez(f, **arrays))


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _open_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist")
    if not zipfile.is_zipfile(path) and not _is_npy(path):
        raise DataError(f"'{path}' is not an .npz archive (not a zip file): write one with np.savez")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"'{path}' is not a readable .npz file: {e}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):  # np.load reads a bare .npy as one array
        raise DataError(f"'{path}' is a single .npy array, not an .npz archive: save it with "
                        "np.savez(path, arr_0=images) (uint8 NHWC)")
    return data


def _member(data: np.lib.npyio.NpzFile, key: str, path: str | Path) -> np.ndarray:
    """One array of an open .npz; a damaged or non-numpy member is a DataError naming it."""
    try:
        array = data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"'{path}': member '{key}' cannot be read: {e}") from None
    if not isinstance(array, np.ndarray):  # numpy hands back the raw bytes of a non-.npy member
        raise DataError(f"'{path}': member '{key}' is not a numpy array")
    return array


def _floats(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float64)


def _count(array: np.ndarray | None, path: str | Path) -> int:
    if array is None:
        return 0
    if array.size != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"'{path}': 'count' must be one integer, got {array.dtype} {array.shape}")
    return int(array.reshape(()))


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def write_sample_batch(path: str | Path, images: np.ndarray | torch.Tensor,
                       labels: np.ndarray | torch.Tensor | None = None, prompts: list[str] | None = None) -> Path:
    """Write an ADM sample batch: ``images`` uint8 NHWC [N, H, W, C] -> ``arr_0``; labels -> ``arr_1``;
    the prompts of a text-to-image batch -> ``prompts`` (a unicode array [N], no pickling)."""
    images = _as_numpy(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"ADM batches hold uint8 [N, H, W, 1|3] images, got {images.dtype} "
                        f"{tuple(images.shape)}")
    arrays = {"arr_0": images}
    if labels is not None:
        labels = _as_numpy(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        arrays["arr_1"] = labels
    if prompts is not None:
        if len(prompts) != images.shape[0]:
            raise DataError(f"{images.shape[0]} images but {len(prompts)} prompts")
        arrays["prompts"] = np.array(list(prompts), dtype=str)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def read_prompts(path: str | Path) -> list[str] | None:
    """The prompts stored in a text-to-image sample batch (None when it has none)."""
    with _open_npz(path) as data:
        return [str(p) for p in data["prompts"]] if "prompts" in data.files else None


def read_sample_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an ADM batch -> (uint8 images NHWC [N, H, W, C], labels [N] or None)."""
    with _open_npz(path) as data:
        if "arr_0" not in data.files:
            raise DataError(f"'{path}' has no 'arr_0' image array (keys: {', '.join(data.files)})")
        images = _member(data, "arr_0", path)
        label_key = "labels" if "labels" in data.files else "arr_1"
        labels = _member(data, label_key, path) if label_key in data.files else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"'{path}': arr_0 must be uint8 [N, H, W, 1|3] (NHWC), got {images.dtype} "
                        f"{tuple(images.shape)}")
    return images, (None if labels is None else labels.astype(np.int64).reshape(-1))


def has_stats(path: str | Path) -> bool:
    """Does this .npz hold precomputed ``mu``/``sigma`` (an ADM reference batch or a stats file)?"""
    with _open_npz(path) as data:
        return "mu" in data.files and "sigma" in data.files


def has_pool_features(path: str | Path) -> bool:
    """Does this statistics .npz also hold the [N, 2048] pool features (``fae eval ref-stats``'s
    ``with_features``)? Reads the member names only."""
    with _open_npz(path) as data:
        return "pool_features" in data.files


def read_stats(path: str | Path) -> InceptionStats:
    """Precomputed statistics from an ADM reference batch or a ``fae eval ref-stats`` file."""
    with _open_npz(path) as data:
        files = set(data.files)
        if not {"mu", "sigma"} <= files:
            raise DataError(f"'{path}' holds no precomputed 'mu'/'sigma' (keys: {', '.join(sorted(files))})")
        arrays = {key: _member(data, key, path) for key in files}
    stats = InceptionStats(
        mu=_floats(arrays["mu"]), sigma=_floats(arrays["sigma"]),
        mu_s=_floats(arrays["mu_s"]) if "mu_s" in files else None,
        sigma_s=_floats(arrays["sigma_s"]) if "sigma_s" in files else None,
        count=_count(arrays.get("count"), path),
        pool_features=arrays.get("pool_features"))
    _check_all_moments(path, stats)
    features = stats.pool_features
    if features is not None and (features.ndim != 2 or features.shape[1] != stats.mu.shape[0]):
        raise DataError(f"'{path}': pool_features {features.shape} must be [N, {stats.mu.shape[0]}] "
                        f"like mu {stats.mu.shape}")
    return stats


def read_moments(path: str | Path) -> InceptionStats:
    """``mu`` / ``sigma`` (and ``mu_s`` / ``sigma_s``) of a statistics file, checked, without its
    pool features or images: what a check before compute reads (a 50K-image file's pool
    features are 400 MB)."""
    with _open_npz(path) as data:
        files = set(data.files)
        if not {"mu", "sigma"} <= files:
            raise DataError(f"'{path}' holds no precomputed 'mu'/'sigma' (keys: {', '.join(sorted(files))})")
        arrays = {key: _floats(_member(data, key, path)) for key in ("mu", "sigma", "mu_s", "sigma_s")
                  if key in files}
    stats = InceptionStats(mu=arrays["mu"], sigma=arrays["sigma"], mu_s=arrays.get("mu_s"),
                           sigma_s=arrays.get("sigma_s"))
    _check_all_moments(path, stats)
    return stats


def _check_all_moments(path: str | Path, stats: InceptionStats) -> None:
    """Pool moments, and spatial ones when present (both or neither), each a mean and a square covariance."""
    _check_moments(path, "mu", stats.mu, "sigma", stats.sigma)
    if (stats.mu_s is None) != (stats.sigma_s is None):
        raise DataError(f"'{path}' holds only one of 'mu_s'/'sigma_s'; sFID needs both")
    if stats.mu_s is not None:
        _check_moments(path, "mu_s", stats.mu_s, "sigma_s", stats.sigma_s)


def _check_moments(path: str | Path, mean_key: str, mean: np.ndarray, cov_key: str,
                   cov: np.ndarray) -> None:
    """A mean [D] and a square covariance [D, D] of the same width."""
    if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
        raise DataError(f"'{path}': {mean_key} {mean.shape} and {cov_key} {cov.shape} do not form "
                        f"a mean [D] and a square covariance [D, D]")


class NpzImages:
    """Random-access reader of an ``.npz`` image array without loading it all (50K x 256^2 x 3 is 10 GB).

    ``np.savez`` stores members uncompressed, so a batch is one seek + read inside the zip member
    (compressed members still work, just slower). Acts as an image source for
    :func:`fae.evaluation.features.compute_inception_stats`.

    Args:
        path: the ``.npz`` file.
        key: the array's name (ADM batches: ``arr_0``).
    """

    def __init__(self, path: str | Path, key: str = "arr_0"):
        self.path, self.key = Path(path), key
        with _open_npz(self.path) as data:  # validates the file and the key
            if key not in data.files:
                raise DataError(f"'{path}' has no '{key}' array (keys: {', '.join(data.files)})")
        self._zip = zipfile.ZipFile(self.path)
        self._member = self._zip.open(f"{key}.npy")
        try:
            version = np.lib.format.read_magic(self._member)
        except ValueError as e:
            raise DataError(f"'{path}': member '{key}' is not a .npy array: {e}") from None
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise DataError(f"'{path}': unsupported .npy format version {version} for '{key}'")
        try:
            shape, fortran, dtype = readers[version](self._member)
        except ValueError as e:
            raise DataError(f"'{path}': the header of member '{key}' is damaged: {e}") from None
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3) or fortran:
            raise DataError(f"'{path}': {key} must be uint8 [N, H, W, 1|3] (NHWC, C order), got "
                            f"{dtype} {shape}")
        self.shape = shape
        self._offset = self._member.tell()
        self._item_bytes = int(np.prod(shape[1:]))

    def __len__(self) -> int:
        return int(self.shape[0])

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """uint8 [stop - start, C, H, W]."""
        self._member.seek(self._offset + start * self._item_bytes)
        raw = self._member.read((stop - start) * self._item_bytes)
        array = np.frombuffer(raw, dtype=np.uint8).reshape(stop - start, *self.shape[1:])  # NHWC
        return nhwc_to_nchw(array)

    def close(self) -> None:
        self._member.close()
        self._zip.close()


class FolderImages:
    """The images below a folder (PNG, JPEG, ...; sorted by path) as an image source: a sample
    folder written by ``fae sample --png`` scores exactly as the ``.npz`` of the same images.

    Args:
        folder: the folder; it must hold at least one image, all of one size (checked from the
            file headers when built, so a mismatch fails before any image is scored).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"'{folder}' is not a folder of images")
        self.files = list_images(self.folder)
        if not self.files:
            raise DataError(f"'{folder}' holds no image files (PNG / JPEG); write them with "
                            f"`fae sample --png {folder}`")
        check_one_size(self.files, hint="every image of a sample folder must have one size")

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """uint8 [stop - start, 3, H, W] (grey or RGBA files are converted to RGB)."""
        return torch.stack([to_chw_uint8(np.asarray(load_rgb(path))) for path in self.files[start:stop]])
