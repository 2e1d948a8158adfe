"""Patch-level maps (``fae.evaluation.patch_maps`` / ``patch_study``), ``fae viz patches`` and the
demo's patch section: values against brute force, synthetic images with a known answer, the CLI
end to end on a tiny FAE export, and bad inputs."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fae.cli import main
from fae.evaluation import patch_maps as pm
from fae.evaluation.patch_study import PatchSettings, patch_study

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------------ maps


def test_similarity_maps_equal_a_brute_force_cosine_loop_and_self_similarity_is_one():
    x = torch.randn(3, 10, 5, generator=torch.Generator().manual_seed(1))
    maps = pm.similarity_maps(x)
    for b in range(3):
        for q in range(10):
            for k in range(10):
                u, v = x[b, q].double(), x[b, k].double()
                assert float(maps[b, q, k]) == pytest.approx(float(u @ v / (u.norm() * v.norm())), abs=1e-5)
    assert torch.allclose(maps.diagonal(dim1=1, dim2=2), torch.ones(3, 10), atol=1e-6)


def test_map_correlation_equals_numpy_corrcoef_over_the_other_patches():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 9, 6, generator=g), torch.randn(2, 9, 4, generator=g)
    r = pm.query_correlations(pm.similarity_maps(a), pm.similarity_maps(b))
    ma, mb = pm.similarity_maps(a).double().numpy(), pm.similarity_maps(b).double().numpy()
    for i in range(2):
        for q in range(9):
            keep = [k for k in range(9) if k != q]
            assert float(r[i, q]) == pytest.approx(np.corrcoef(ma[i, q, keep], mb[i, q, keep])[0, 1], abs=1e-9)
    summary = pm.map_correlation(a, b)
    assert summary["mean"] == pytest.approx(float(r.mean()), abs=1e-9) and summary["queries"] == 18


def test_map_correlation_is_one_for_cosine_preserving_features_and_skips_constant_maps():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 8, 5, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    scaled = (a @ rotation) * torch.rand(2, 8, 1, generator=g).add(0.5)  # rotated, rescaled per patch
    assert pm.map_correlation(a, scaled)["mean"] == pytest.approx(1.0, abs=1e-6)
    a[1, 4] = 0  # an all-zero token: its map is constant (0), so it has no correlation
    summary = pm.map_correlation(a, a.clone())
    assert summary["skipped"] == 1 and summary["queries"] == 15 and summary["mean"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ K-Means


def test_kmeans_recovers_two_well_separated_clusters_in_every_set_and_is_seeded():
    g = torch.Generator().manual_seed(4)
    truth = torch.randint(2, (5, 40), generator=g)
    truth[:, 0], truth[:, 1] = 0, 1  # both clusters present in each set
    centres = torch.tensor([[5.0, 0, 0], [-5.0, 2, 0]])
    x = centres[truth] + 0.3 * torch.randn(5, 40, 3, generator=g)
    labels, centroids = pm.kmeans(x, 2, seed=7)
    for b in range(5):
        same = torch.equal(labels[b], truth[b]) or torch.equal(labels[b], 1 - truth[b])
        assert same, f"set {b}: {labels[b].tolist()} vs {truth[b].tolist()}"
        found = centroids[b][labels[b][:2]]  # the centroid of truth-cluster 0, then 1
        assert torch.allclose(found, centres, atol=0.3)
    assert torch.equal(pm.kmeans(x, 2, seed=7)[0], labels)


def test_foreground_is_every_cluster_but_the_corners_one():
    h = w = 6
    g = torch.Generator().manual_seed(5)
    object_patch = torch.zeros(h, w, dtype=torch.bool)
    object_patch[1:5, 2:5] = True
    object_patch[0, 5] = True  # the object reaches one corner: three corners still vote background
    background, thing = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    tokens = torch.where(object_patch.flatten()[:, None], thing, background) + 0.05 * torch.randn(2, h * w, 4, generator=g)
    mask = pm.foreground_masks(tokens, (h, w), clusters=2, seed=0)
    assert torch.equal(mask, object_patch.flatten().expand(2, -1))
    uniform = torch.ones(1, h * w, 4)  # one cluster takes every patch: all of it is foreground
    assert bool(pm.foreground_masks(uniform, (h, w)).all())


# ------------------------------------------------------------------------------------------ checks


def test_flip_check_is_one_on_tokens_that_follow_the_image_and_chance_on_random_tokens():
    grid = (8, 8)
    g = torch.Generator().manual_seed(6)
    field = torch.randn(300, 8, 8, 16, generator=g)  # a token per position: the "image content"
    tokens = field.flatten(1, 2)  # [B, N, D]
    flipped = field.flip(2).flatten(1, 2)  # the mirrored image: content (i, j) now at (i, w-1-j)
    everything = torch.ones(300, 64, dtype=torch.bool)
    assert pm.agreement(tokens, flipped, pm.flip_targets(grid), everything, grid, radius=0)["agreement"] == 1.0
    unrelated = torch.randn(300, 64, 16, generator=g)
    result = pm.agreement(tokens, unrelated, pm.flip_targets(grid), everything, grid, radius=1)
    assert abs(result["agreement"] - result["chance"]) < 0.02 and result["queries"] == 300 * 64


def test_chance_level_and_shift_targets_match_brute_force():
    grid, radius = (5, 7), 1
    expected = pm.flip_targets(grid)
    brute = np.mean([sum(max(abs(n // 7 - m // 7), abs(n % 7 - m % 7)) <= radius for m in range(35)) / 35
                     for n in expected.tolist()])
    assert pm.chance_agreement(expected, torch.ones(1, 35, dtype=torch.bool), grid, radius) == pytest.approx(brute)
    shifted = pm.shift_targets(grid, 2).view(5, 7)
    assert shifted[3, 0] == 3 * 7 + 2 and (shifted[:, 5:] == -1).all()
    assert pm.same_class_partners(torch.tensor([3, 1, 3, 2, 1, 3])).tolist() == [2, 4, 5, -1, 1, 0]


class SortedPatchFAE:
    """An FAE stand-in whose "backbone" token is a patch's sorted pixel values: unchanged when the
    image is flipped (a patch's mirror image has the same values) or shifted by whole patches, so
    flip and shift agreement must be exactly 1. Latents: a fixed random linear map of the tokens."""

    def __init__(self, grid=(6, 6), patch=8, c=12):
        self.config = SimpleNamespace(grid=grid)
        self.patch = patch
        self.proj = torch.randn(patch * patch, c, generator=torch.Generator().manual_seed(8))

    def tokens_from(self, x):
        if x.ndim == 3:
            return x
        p = self.patch
        patches = x.float().unfold(2, p, p).unfold(3, p, p)  # [B, 1, h, w, p, p]
        return patches.flatten(4).flatten(1, 3).sort(-1).values  # [B, N, p*p]

    def encode(self, tokens):
        z = self.tokens_from(tokens) @ self.proj  # [B, N, c]
        h, w = self.config.grid
        return z.transpose(1, 2).reshape(len(z), -1, h, w)


def test_patch_study_on_synthetic_images_finds_every_flipped_and_shifted_part():
    g = torch.Generator().manual_seed(9)
    images = torch.zeros(6, 1, 48, 48, dtype=torch.uint8)  # 6x6 patches of 8 px: an empty border ring
    images[:, :, 8:40, 8:40] = torch.randint(1, 256, (6, 1, 32, 32), generator=g, dtype=torch.uint8)
    summary, data = patch_study(SortedPatchFAE(), images, PatchSettings(rows=2, pairs=5),
                                labels=torch.tensor([0, 0, 1, 1, 2, 2]))
    assert summary["foreground_fraction"] == pytest.approx(16 / 36)  # K-Means: the interior is the foreground
    for key in ("flip_tokens", "flip_latents", "shift_tokens", "shift_latents"):
        assert summary[key] == 1.0, key
    assert summary["shift_patches"] == 1 and summary["flip_chance"] < 0.3 and summary["shift_queries"] == 6 * 16
    assert summary["map_correlation"] < 1.0  # a random linear map does not keep cosines
    assert data["image_b"].shape == (2, 1, 48, 48) and torch.equal(data["image_b"][0], images[1])
    picked = data["match_from"][0][data["match_from"][0] >= 0]
    interior = {i * 6 + j for i in range(1, 5) for j in range(1, 5)}
    assert len(picked) == 5 and set(picked.tolist()) <= interior  # random foreground queries only


# ------------------------------------------------------------------------------------------ CLI


@torch.no_grad()
def test_viz_patches_writes_a_png_and_json_whose_numbers_the_library_reproduces(tiny_fae_export, tmp_path, capsys):
    from fae.autoencoder import FAE
    from fae.data.fashion_mnist import FashionMNIST

    png = tmp_path / "maps.png"
    assert main(["viz", "patches", "--fae", str(tiny_fae_export), "--images", "0,1,2,5", "--out", str(png),
                 "device=cpu", "patches.rows=3"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.size[0] > 500 and im.size[1] > 300
    saved = json.loads(png.with_suffix(".json").read_text())
    assert saved["indices"] == [0, 1, 2, 5] and saved["images"] == 4

    fae = FAE.from_pretrained(tiny_fae_export)
    test = FashionMNIST("test")
    images = test.images[[0, 1, 2, 5]]
    tokens = fae.tokens_from(images)
    latents = pm.latent_patches(fae.encode(tokens))
    assert saved["map_correlation"] == pytest.approx(pm.map_correlation(tokens, latents)["mean"], abs=1e-6)
    grid = tuple(fae.config.grid)
    fg = pm.foreground_masks(tokens, grid)
    flipped = fae.tokens_from(images.flip(-1))
    for space, a, b in (("tokens", tokens, flipped), ("latents", latents, pm.latent_patches(fae.encode(flipped)))):
        again = pm.agreement(a, b, pm.flip_targets(grid), fg, grid, radius=1)
        assert saved[f"flip_{space}"] == pytest.approx(again["agreement"])
        assert saved["flip_chance"] == pytest.approx(again["chance"])
    assert ("pair_tokens" in saved) == (len(set(test.labels[[0, 1, 2, 5]].tolist())) < 4)


def test_viz_patches_bad_inputs_name_the_problem(tiny_fae_export, tmp_path, capsys):
    out = ["--out", str(tmp_path / "x.png"), "device=cpu"]
    assert main(["viz", "patches", "--fae", str(tiny_fae_export), "--images", "0,10000", *out]) == 2
    err = capsys.readouterr().err
    assert "10000" in err and "out of range" in err and "10000 images" in err
    missing = tmp_path / "no_such_export"
    assert main(["viz", "patches", "--fae", str(missing), "--images", "0,1", *out]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["viz", "patches", "--fae", str(tiny_fae_export), "--images", "zero,one", *out]) == 2
    assert "zero,one" in capsys.readouterr().err
    assert main(["viz", "patches", "--fae", str(tiny_fae_export), "--images", "3", *out]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["viz", "patches", "--fae", str(tiny_fae_export), *out, "patches.clusters=0"]) == 2
    assert "clusters" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_viz_patches_reads_an_image_folder(tiny_fae_export, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(g.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    assert main(["viz", "patches", "--fae", str(tiny_fae_export), "--images", str(folder), "--out",
                 str(tmp_path / "f.png"), "device=cpu"]) == 0
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["indices"] == [0, 1, 2] and "pair_tokens" not in saved  # unlabelled: no same-class check
    assert 0.0 <= saved["flip_tokens"] <= 1.0 and -1.0 <= saved["map_correlation"] <= 1.0


# ------------------------------------------------------------------------------------------ demo


@torch.no_grad()
def test_demo_patch_section_adds_its_numbers_and_figure_to_the_report(tiny_fae_export, tmp_path):
    from fae.autoencoder import FAE
    from fae.data.fashion_mnist import FashionMNIST
    from fae.demo.config import EvalSettings
    from fae.demo.patches import SECTION, add_patch_section, patch_metrics
    from fae.report import Report

    fae = FAE.from_pretrained(tiny_fae_export)
    test = FashionMNIST("test", limit=12)
    tokens = fae.tokens_from(test.images)
    ev = EvalSettings(patch_images=10, patch_rows=2)
    metrics, figure = patch_metrics(fae, tokens, test.images, test.labels, ev)
    direct, _ = patch_study(fae, test.images[:10], PatchSettings(rows=2, batch_size=ev.batch_size),
                            labels=test.labels[:10])  # tokens recomputed: the same numbers
    assert metrics["patch_images"] == 10 and metrics["patch_flip_tokens"] == pytest.approx(direct["flip_tokens"])
    assert metrics["patch_map_correlation"] == pytest.approx(direct["map_correlation"], abs=1e-6)
    (tmp_path / "eval").mkdir()
    torch.save({"patches": figure}, tmp_path / "eval" / "images.pt")
    report = Report("t")
    add_patch_section(report, tmp_path, metrics)
    html = report.render()
    assert SECTION in html and f"{metrics['patch_flip_latents']:.3f}" in html
    assert (tmp_path / "figures" / "patch_maps.png").is_file()
    empty = Report("old")
    add_patch_section(empty, tmp_path, {})  # an evaluation from before the patch checks: no section
    assert SECTION not in empty.render()
