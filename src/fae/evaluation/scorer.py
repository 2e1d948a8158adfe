"""One FID scorer: the Inception network and a reference set; images in, FID out.

Every "images -> ADM Inception features -> distance to a reference" of the package goes through
:class:`FIDScorer`: ``fae eval fid`` / ``ref-stats`` / ``recon``, the pixel decoder's held-out
rFID, the demo's and the experiment's FIDs. It holds the network (loaded once, on first use) and
the reference: statistics (:class:`InceptionStats`, with pool features where KID and
precision/recall need them) or pool features alone. Each sample set goes through Inception once;
every metric of it reads those features.

Two roads to a Frechet distance, kept apart on purpose (their numbers differ in the last digits):

* from pool features (:meth:`FIDScorer.fid`, :meth:`FIDScorer.score`): ``fid_from_features``
  (``np.cov``; the exact low-rank identity when N < 2048), for rFID and the small sets of the demo,
  the experiment and the held-out evaluation;
* from streamed statistics (:meth:`FIDScorer.metrics`): the ADM suite of ``fae eval fid`` (mu /
  sigma from float64 sums, sFID, KID, precision/recall, IS), against precomputed reference files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fae import distributed as dist
from fae.errors import DataError
from fae.evaluation.features import compute_inception_stats
from fae.evaluation.fid import fid_from_features
from fae.evaluation.intervals import bootstrap_fid
from fae.evaluation.inception import load_inception
from fae.evaluation.stats import FolderImages, InceptionStats, NpzImages, has_stats, read_stats
from fae.evaluation.suite import generation_metrics
from fae.io import atomic_torch_save


class FIDScorer:
    """Images -> ADM Inception features -> FID (or the ADM suite) against one reference set.

    Args:
        net: the Inception feature network (``load_inception``, or ``load_scoring_network`` for
            IS logits); default: the shared TorchScript on ``device``, loaded on first use.
        device: where the default network runs.
        batch_size: images per Inception forward pass on each rank.
        sqrt_method: the FID matrix square root, "sqrtm" (checked, with fallback) or "eigh".
        progress: show a tqdm bar (rank 0) while an image set is embedded.
    """

    def __init__(self, net=None, *, device: str | torch.device = "cpu", batch_size: int = 50,
                 sqrt_method: str = "sqrtm", progress: bool = True):
        self._net = net
        self.device = device
        self.batch_size = batch_size
        self.sqrt_method = sqrt_method
        self.progress = progress
        self.reference: InceptionStats | np.ndarray | None = None  # statistics, or pool features [R, 2048]
        self._moments: tuple[np.ndarray, np.ndarray] | None = None  # the reference's (mu, sigma), once computed

    @property
    def net(self):
        if self._net is None:
            self._net = load_inception(device=self.device)
        return self._net

    # ---- images -> features -------------------------------------------------------------------

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features [B, 2048] (float32, CPU) of one batch of uint8-valued images [B, C, H, W],
        on this rank only (for callers whose loop already holds this rank's shard)."""
        return self.net(images)["pool"].cpu()

    def stats(self, images, *, keep_features: bool = True, desc: str = "inception") -> InceptionStats:
        """Statistics (and, with ``keep_features``, pool features) of a whole image set: an image
        source, NHWC uint8 array, NCHW tensor or dataset, sharded over ranks and gathered."""
        return compute_inception_stats(images, self.net, batch_size=self.batch_size, keep_features=keep_features,
                                       progress=self.progress, desc=desc)

    def features(self, images, desc: str = "inception") -> np.ndarray:
        """Pool features [N, 2048] (float32) of a whole image set, in its order."""
        return self.stats(images, desc=desc).pool_features

    def npz_stats(self, path: str | Path, *, need_features: bool, desc: str) -> InceptionStats:
        """Statistics of an ADM image batch or statistics file, or of a folder of images (``fae
        sample --png``); precomputed mu/sigma are kept as given (ADM), and pool features are
        computed from its images only when ``need_features``."""
        if Path(path).is_dir():
            return self.stats(FolderImages(path), keep_features=need_features, desc=desc)
        if not Path(path).is_file():
            raise DataError(f"'{path}' does not exist")
        if not has_stats(path):
            return self.stats(NpzImages(path), keep_features=need_features, desc=desc)
        stats = read_stats(path)
        if need_features and stats.pool_features is None and _has_images(path):
            images = NpzImages(path)
            stats.pool_features = self.features(images, desc)
            stats.count = stats.count or len(images)
        return stats

    # ---- the reference ------------------------------------------------------------------------

    def use_reference(self, reference: InceptionStats | np.ndarray) -> FIDScorer:
        """Score against ``reference``: statistics, or pool features [R, 2048]; returns self."""
        self.reference = reference
        self._moments = None
        return self

    def cached_reference(self, path: Path, key: Any, images: Callable[[], Any], desc: str = "reference",
                         extras: Callable[[], dict] | None = None) -> dict:
        """Score against the pool features of ``images()``, kept in ``path`` as
        ``{"key", "features", **extras()}``: read back while the file was written for ``key``, else
        computed and written (rank 0). ``extras`` run once the reference is set, so they may score
        against it (e.g. a real-vs-real floor). Returns what the file holds."""
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            if saved.get("key") == key:
                self.use_reference(saved["features"].numpy())
                return saved
        self.use_reference(self.features(images(), desc))
        saved = {"key": key, "features": torch.from_numpy(self.reference), **(extras() if extras else {})}
        if dist.is_main():
            atomic_torch_save(saved, path)
        return saved

    def reference_features(self) -> np.ndarray:
        """The reference's pool features [R, 2048] (what a feature-based FID needs)."""
        features = self.reference.pool_features if isinstance(self.reference, InceptionStats) else self.reference
        if features is None:
            raise DataError("the FID reference holds no pool features (a statistics file without "
                            "'pool_features' and without images)")
        return features

    # ---- scores -------------------------------------------------------------------------------

    def fid(self, features: np.ndarray, *, reference_first: bool = False) -> float:
        """FID of pool features [N, 2048] against the reference's (``fid_from_features``).

        The distance is symmetric, its rounding is not: ``reference_first`` puts the reference in
        the first slot (the held-out pixel-decoder rFID's order), so every caller keeps its digits.
        """
        reference = self.reference_features()
        pair = (reference, features) if reference_first else (features, reference)
        return fid_from_features(*pair, method=self.sqrt_method)

    def reference_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The reference's mean [2048] and covariance [2048, 2048] (its statistics as given, or
        ``np.cov`` of its pool features, as ``fid_from_features`` takes them); computed once."""
        if self._moments is None:
            if isinstance(self.reference, InceptionStats):
                self._moments = (self.reference.mu, self.reference.sigma)
            else:
                features = self.reference_features().astype(np.float64)
                self._moments = (features.mean(axis=0), np.cov(features, rowvar=False))
        return self._moments

    def fid_interval(self, features: np.ndarray, *, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
        """Bootstrap interval of the FID of pool features [N, 2048]: the sample features resampled,
        the reference statistics fixed (``fae.evaluation.intervals.bootstrap_fid``, on this scorer's
        device). Reads the same features as :meth:`fid`, so a sample set goes through Inception once
        for both."""
        mu, sigma = self.reference_moments()
        return bootstrap_fid(features, mu, sigma, resamples=resamples, seed=seed, level=level, device=self.device)

    def score(self, images, desc: str = "samples") -> float:
        """FID of a whole image set against the reference."""
        return self.fid(self.features(images, desc))

    def metrics(self, samples: InceptionStats, **options) -> dict:
        """The ADM suite (FID, sFID, KID, precision/recall, IS) of ``samples`` against the reference
        statistics; ``options``: :func:`fae.evaluation.suite.generation_metrics`'s."""
        if not isinstance(self.reference, InceptionStats):
            raise DataError("the ADM suite needs reference statistics (mu / sigma), not bare features")
        return generation_metrics(samples, self.reference, sqrt_method=self.sqrt_method, **options)


def _has_images(path: str | Path) -> bool:
    with np.load(path, allow_pickle=False) as data:
        return "arr_0" in data.files
