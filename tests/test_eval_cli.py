"""The ``fae eval`` verbs end to end on tiny inputs, and FAE reconstruction metrics."""
import json

import numpy as np
import pytest
import torch

from fae.cli import main
from fae.data.fashion_mnist import FashionMNIST
from fae.evaluation.image_metrics import psnr_per_image
from fae.evaluation.recon import feature_cosine, match_reference, reconstruction_metrics
from fae.evaluation.stats import read_stats, write_sample_batch

def _json_out(capsys) -> dict:
    out = capsys.readouterr().out
    assert "fae eval" in out and "wrote" in out
    return json.loads(out.splitlines()[0])


def test_ref_stats_then_fid(tmp_path, capsys):
    stats_path = tmp_path / "ref.npz"
    assert main(["eval", "ref-stats", "--out", str(stats_path), "data.split=test", "data.limit=6",
                 "progress=false"]) == 0
    assert _json_out(capsys)["count"] == 6
    ref = read_stats(stats_path)
    assert ref.count == 6 and ref.pool_features.shape == (6, 2048) and ref.mu_s.shape == (2023,)

    images = FashionMNIST("train", limit=6).images.permute(0, 2, 3, 1).numpy()  # [6, 28, 28, 1] NHWC
    samples = write_sample_batch(tmp_path / "samples.npz", images, np.arange(6))
    assert main(["eval", "fid", "--samples", str(samples), "--ref", str(stats_path), "sqrt_method=eigh",
                 "kid_subsets=3", "kid_subset_size=5", "pr_k=2", "progress=false"]) == 0
    result = _json_out(capsys)
    written = json.loads((tmp_path / "samples.metrics.json").read_text())
    assert written["fid"] == result["fid"] > 0 and result["sfid"] > 0
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["kid"] is not None and result["inception_score"] is None

    # a statistics file scored against itself: FID 0 without running the network
    assert main(["eval", "fid", "--samples", str(stats_path), "--ref", str(stats_path), "metrics=[fid]",
                 "sqrt_method=eigh", f"out={tmp_path / 'self.json'}"]) == 0
    assert _json_out(capsys)["fid"] == pytest.approx(0.0, abs=1e-6)

    # an ADM reference batch (arr_0 + mu/sigma/mu_s/sigma_s): its precomputed statistics are used
    # as given, not recomputed from arr_0 (here arr_0 holds other images, so recomputing gives FID > 0)
    adm = tmp_path / "VIRTUAL_like.npz"
    np.savez(adm, arr_0=images, mu=ref.mu, sigma=ref.sigma, mu_s=ref.mu_s, sigma_s=ref.sigma_s)
    assert main(["eval", "fid", "--samples", str(stats_path), "--ref", str(adm), "metrics=[fid,sfid]",
                 "sqrt_method=eigh", f"out={tmp_path / 'adm.json'}"]) == 0
    adm_result = _json_out(capsys)
    assert adm_result["fid"] == pytest.approx(0.0, abs=1e-6) and adm_result["sfid"] == pytest.approx(0.0, abs=1e-6)


def test_fid_verb_gives_a_bootstrap_interval_on_request(tmp_path, capsys):
    from fae.evaluation.intervals import bootstrap_fid

    ref_path = tmp_path / "ref.npz"
    assert main(["eval", "ref-stats", "--out", str(ref_path), "data.split=test", "data.limit=40",
                 "progress=false"]) == 0
    capsys.readouterr()
    samples_path = tmp_path / "samples.npz"
    assert main(["eval", "ref-stats", "--out", str(samples_path), "data.split=train", "data.limit=24",
                 "progress=false"]) == 0  # statistics with pool features: resampled without Inception
    capsys.readouterr()
    common = ["eval", "fid", "--samples", str(samples_path), "--ref", str(ref_path), "metrics=[fid]",
              "sqrt_method=eigh"]
    assert main(common + ["fid_resamples=200", f"out={tmp_path / 'ci.json'}"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[0])
    lo, hi = result["fid_ci"]
    assert lo < result["fid"] < hi
    ref, samples = read_stats(ref_path), read_stats(samples_path)
    assert (lo, hi) == bootstrap_fid(samples.pool_features, ref.mu, ref.sigma, resamples=200)

    bare = tmp_path / "bare.npz"  # statistics alone: nothing to resample, refused before any work
    np.savez(bare, mu=samples.mu, sigma=samples.sigma)
    assert main(["eval", "fid", "--samples", str(bare), "--ref", str(ref_path), "metrics=[fid]",
                 "fid_resamples=200"]) == 2
    err = capsys.readouterr().err
    assert "bare.npz" in err and "fid_resamples" in err
    assert main(common + ["fid_resamples=1"]) == 2
    assert "fid_resamples" in capsys.readouterr().err


def test_fid_verb_errors_name_the_problem(tmp_path, capsys):
    assert main(["eval", "fid", "--samples", str(tmp_path / "missing.npz"), "--ref", str(tmp_path / "x.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert main(["eval", "fid", "metrics=[fid,bogus]"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_probe_verb_raw_latent_and_reconstructed(tmp_path, capsys, tiny_fae_export):
    common = ["train_limit=40", "test_limit=20", "epochs=10", "progress=false", "batch_size=20"]
    assert main(["eval", "probe", "--backbone", "tiny-vit", f"out={tmp_path / 'raw.json'}", *common]) == 0
    raw = _json_out(capsys)
    assert raw["dim"] == 64 and raw["num_train"] == 40 and raw["num_test"] == 20 and 0 <= raw["top1"] <= 1
    assert json.loads((tmp_path / "raw.json").read_text())["top1"] == raw["top1"]
    for kind, dim in (("latent", 4), ("reconstructed", 64)):
        assert main(["eval", "probe", "--fae", str(tiny_fae_export), "--features", kind,
                     f"out={tmp_path / kind}.json", *common]) == 0
        assert _json_out(capsys)["dim"] == dim
    assert main(["eval", "probe", "--features", "latent"]) == 2  # needs an FAE
    assert "fae=DIR" in capsys.readouterr().err


def test_recon_metrics_match_direct_computation(tmp_path, capsys, tiny_fae_export):
    from fae.autoencoder import FAE

    assert main(["eval", "recon", "--fae", str(tiny_fae_export), "limit=4", "sqrt_method=eigh", "progress=false",
                 f"out={tmp_path / 'recon.json'}"]) == 0
    result = _json_out(capsys)
    assert result["num_images"] == 4 and result["rfid"] > 0 and -1 <= result["ssim"] <= 1

    fae = FAE.from_pretrained(tiny_fae_export)
    dataset = FashionMNIST("test", limit=4)
    again = reconstruction_metrics(fae, dataset, batch_size=3, rfid=False, progress=False)
    images = dataset.images  # [4, 1, 28, 28]
    with torch.no_grad():
        tokens = fae.tokens_from(images)
        tokens_hat = fae.decode_features(fae.encode(tokens))
        recon = fae.decode_features_to_pixels(tokens_hat).clamp(0, 1)
    assert again["feature_cosine"] == pytest.approx(float(feature_cosine(tokens, tokens_hat).mean()), rel=1e-6)
    saved = (recon * 255).round() / 255  # the uint8 rule: scores see what a saved PNG holds
    assert again["psnr"] == pytest.approx(float(psnr_per_image(match_reference(images, saved), saved).mean()),
                                          rel=1e-9)
    assert again["psnr"] != pytest.approx(float(psnr_per_image(match_reference(images, recon), recon).mean()),
                                          rel=1e-6)
    assert again["feature_cosine"] == pytest.approx(result["feature_cosine"], rel=1e-6)
