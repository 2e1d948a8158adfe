"""STARFlow (fae.generation.flow): exact inverses, log-determinants against brute-force Jacobians,
the likelihood of known Gaussians, cached = uncached decoding, guidance at scale 1, a falling NLL,
and the flow through the generator stage, its export and `fae sample` (tiny configs, CPU)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fae.autoencoder import FAE
from fae.cli import main as fae_main
from fae.config import load_config
from fae.errors import CheckpointError, ConfigError, LatentCacheError
from fae.evaluation.stats import read_sample_batch
from fae.generation import FlowGenerator, Generator, load_generator
from fae.generation.flow import STARFlow, TARFlowBlock, build_flow, flow_loss, guided_affine
from fae.generation.flow_config import FlowConfig, FlowSamplerConfig
from fae.nn import Attention, KVCache
from fae.training.engine import train
from fae.training.latents import cache_latents
from fae.training.run_folder import saved_form
from fae.training.stages.generator import GeneratorRunConfig, build_stage

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(deep_layers=2, shallow_blocks=2, shallow_layers=1, dim=32, head_dim=8, latent_channels=3,
            latent_size=4, num_classes=5)


def randomize(module: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Non-zero output layers: a fresh flow is the identity map, which would test nothing."""
    for m in module.modules():
        if isinstance(m, TARFlowBlock):
            torch.nn.init.normal_(m.proj_out.weight, std=std)
            torch.nn.init.normal_(m.proj_out.bias, std=std)
    return module


def tiny_flow(seed: int = 0, **overrides) -> STARFlow:
    torch.manual_seed(seed)
    return randomize(STARFlow(FlowConfig(**{**TINY, **overrides}))).double().eval()


def test_cached_attention_fed_in_chunks_equals_full_causal_attention():
    torch.manual_seed(6)
    attn = Attention(16, 2).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full = attn(x, causal=True)
    cache = KVCache()
    chunks = [attn(x[:, a:b], causal=True, cache=cache) for a, b in ((0, 3), (3, 4), (4, 7))]
    assert len(cache) == 7
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-12)
    assert (attn(x) - full).abs().max() > 1e-3  # causality matters here


def test_the_deep_block_is_last_and_orders_alternate():
    flow = tiny_flow(shallow_blocks=3)
    assert [len(b.layers) for b in flow.blocks] == [1, 1, 1, 2]
    assert [b.reverse for b in flow.blocks] == [True, False, True, False]
    assert all(b.conditioned for b in flow.blocks)
    deep_only = tiny_flow(condition="deep")
    assert [b.conditioned for b in deep_only.blocks] == [False, False, True]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kv_cache", [True, False])
def test_each_block_is_exactly_invertible_in_float64(reverse, kv_cache):
    torch.manual_seed(1)
    block = randomize(TARFlowBlock(6, 32, 2, 8, 4.0, "vit", False, (3, 3), reverse, num_classes=4), 0.3)
    block = block.double().eval()
    x = torch.randn(3, 9, 6, dtype=torch.float64)
    labels = torch.tensor([0, 2, 3])
    with torch.no_grad():
        z, logdet = block(x, labels)
        back = block(z, labels, inverse=True, kv_cache=kv_cache)
    assert (z - x).abs().max() > 0.1  # a real transformation
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)


def test_the_whole_flow_is_invertible_with_patches():
    flow = tiny_flow(patch_size=2)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        z, _ = flow(x, torch.tensor([1, 4]))
        torch.testing.assert_close(flow.inverse(z, torch.tensor([1, 4])), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_the_log_determinant_equals_a_brute_force_jacobian(reverse):
    torch.manual_seed(2)
    block = randomize(TARFlowBlock(2, 16, 1, 8, 2.0, "lightning", True, (2, 2), reverse, num_classes=0), 0.5)
    block = block.double().eval()
    x = torch.randn(1, 4, 2, dtype=torch.float64)
    _, logdet = block(x)
    jac = torch.autograd.functional.jacobian(lambda v: block(v.view(1, 4, 2))[0].flatten(), x.flatten())
    assert torch.linalg.det(jac).abs() < 0.999 or torch.linalg.det(jac).abs() > 1.001  # not volume-preserving
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-9)
    # Autoregressive: the Jacobian is triangular in the block's token order.
    order = torch.arange(4).flip(0) if reverse else torch.arange(4)
    blocks = jac.view(4, 2, 4, 2)[order][:, :, order]  # [out token, c, in token, c]
    for i in range(3):
        assert blocks[i, :, i + 1:].abs().max() == 0  # token i depends on tokens <= i only


def test_the_whole_flows_log_likelihood_matches_the_jacobian():
    flow = tiny_flow(latent_channels=1, latent_size=2, head_dim=8, dim=16)
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    label = torch.tensor([3])
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 1, 2, 2), label)[0].flatten(), x.flatten())
    z, _ = flow(x, label)
    expected = torch.linalg.slogdet(jac)[1] - 0.5 * (z.square() + math.log(2 * math.pi)).sum()
    torch.testing.assert_close(flow.log_prob(x, label)[0], expected, rtol=0, atol=1e-9)


def test_an_identity_initialised_flow_gives_the_standard_normal_nll():
    torch.manual_seed(3)
    flow = STARFlow(FlowConfig(**TINY)).double()  # zero output layers: every block is x -> x
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    z, logdet = flow(x, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(4, dtype=torch.float64))
    expected = 0.5 * (x.square() + math.log(2 * math.pi)).flatten(1).mean(1)
    torch.testing.assert_close(flow.nll_per_dim(x, torch.tensor([0, 1, 2, 3])), expected)


def test_a_constant_affine_block_is_a_known_gaussian_and_samples_it():
    """Output weights 0, bias (mu, a): every token is N(mu, e^(2a)) whatever came before."""
    flow = STARFlow(FlowConfig(**{**TINY, "shallow_blocks": 0, "num_classes": 0})).double().eval()
    mu, a = torch.linspace(-1, 1, 3, dtype=torch.float64), torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64)
    with torch.no_grad():
        flow.blocks[0].proj_out.bias.copy_(torch.cat([mu, a]))
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    gauss = torch.distributions.Normal(mu.view(1, 3, 1, 1), a.exp().view(1, 3, 1, 1))
    torch.testing.assert_close(flow.log_prob(x), gauss.log_prob(x).flatten(1).sum(1))
    samples = flow.sample(torch.randn(4000, 3, 4, 4, dtype=torch.float64), None,
                          FlowSamplerConfig(denoise=False))
    torch.testing.assert_close(samples.mean((0, 2, 3)), mu, rtol=0, atol=0.03)
    torch.testing.assert_close(samples.std((0, 2, 3)), a.exp(), rtol=0.03, atol=0)


STARFLOW_PUBLIC = dict(condition="deep", soft_clip_on="affine", log_scale_clip=1.5)  # + class_entry


@pytest.mark.parametrize("settings", [{}, {**STARFLOW_PUBLIC, "class_entry": "start"},
                                      {**STARFLOW_PUBLIC, "class_entry": "prefix"}],
                         ids=["defaults", "public-start", "public-prefix"])
def test_kv_cached_sampling_equals_uncached_sampling_with_and_without_guidance(settings):
    flow = tiny_flow(**settings)
    noise, labels = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 2, 4])
    for scale in (1.0, 2.5):
        cached = flow.sample(noise, labels, FlowSamplerConfig(cfg_scale=scale, denoise=False))
        uncached = flow.sample(noise, labels, FlowSamplerConfig(cfg_scale=scale, denoise=False, kv_cache=False))
        torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-10)


def test_guidance_at_scale_1_equals_conditional_sampling():
    flow = tiny_flow()
    noise, labels = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 2, 4])
    null = flow.conditioner.null_like(labels)
    with torch.no_grad():
        conditional = flow.inverse(noise, labels)
        guided_path = flow.inverse(noise, labels, null_cond=null, cfg_scale=1.0)  # the doubled batch
        guided = flow.inverse(noise, labels, null_cond=null, cfg_scale=3.0)
    torch.testing.assert_close(guided_path, conditional, rtol=0, atol=1e-12)
    assert (guided - conditional).abs().max() > 1e-3  # guidance does change the samples


def test_guided_affine_is_the_normalised_product_of_the_two_gaussians():
    """p_c^(1+w) / p_u^w on a grid of x, renormalised, has the mean and std guided_affine gives."""
    mu_c, a_c, mu_u, a_u, scale = (torch.tensor([v], dtype=torch.float64) for v in (0.5, -0.2, -0.4, 0.1, 2.0))
    mu, a = guided_affine(mu_c, a_c, mu_u, a_u, float(scale))
    xs = torch.linspace(-8, 8, 200001, dtype=torch.float64)
    logp = lambda m, s: torch.distributions.Normal(m, s.exp()).log_prob(xs)
    w = float(scale) - 1
    density = ((1 + w) * logp(mu_c, a_c) - w * logp(mu_u, a_u)).exp()
    density = density / density.sum()
    mean = (density * xs).sum()
    torch.testing.assert_close(mu[0], mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(a.exp()[0], ((density * (xs - mean) ** 2).sum()).sqrt(), rtol=0, atol=1e-8)


def test_denoising_is_tweedies_step_on_the_flows_own_density():
    """Identity flow = N(0, I) prior, so grad log p(x) = -x and the step is x (1 - sigma^2)."""
    flow = STARFlow(FlowConfig(**{**TINY, "noise_std": 0.3})).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    labels = torch.tensor([1, 2])
    torch.testing.assert_close(flow.denoise(x, labels), x * (1 - 0.09))
    sampled = flow.sample(x, labels, FlowSamplerConfig())  # inverse (identity) + denoise
    torch.testing.assert_close(sampled, x * (1 - 0.09))


def test_bf16_autocast_keeps_the_affine_maps_and_log_determinants_in_fp32():
    torch.manual_seed(5)
    flow = randomize(STARFlow(FlowConfig(**TINY))).eval()
    x, labels = torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 3])
    exact = flow_loss(flow, x, labels, 0.1, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = flow(x, labels)
        mixed = flow_loss(flow, x, labels, 0.1, torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32 and logdet.dtype == torch.float32 and mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, rtol=0.02, atol=0.02)


def test_label_dropout_replaces_labels_by_the_null_class_for_every_block_at_once():
    flow = STARFlow(FlowConfig(**{**TINY, "class_dropout": 0.5}))
    labels = torch.zeros(1000, dtype=torch.long)
    flow.train()
    dropped = flow._drop_labels(labels)
    assert set(dropped.tolist()) == {0, 5} and 400 < int((dropped == 5).sum()) < 600
    flow.eval()
    assert torch.equal(flow._drop_labels(labels), labels)


def structured_latents(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 2, 4, 4] latents with strong spatial correlation and a class-dependent mean: a smooth
    random field (low-rank) + a class pattern + small noise; labels [n] in 0..3."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    patterns = torch.linspace(-1.5, 1.5, 4).view(4, 1, 1, 1) * torch.ones(1, 2, 4, 4)
    basis = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(7))
    field = torch.einsum("nk,kchw->nchw", torch.randn(n, 3, generator=generator), basis)
    return patterns[labels] + field + 0.05 * torch.randn(n, 2, 4, 4, generator=generator), labels


def test_a_few_hundred_steps_lower_the_nll_below_the_best_diagonal_gaussian():
    torch.manual_seed(0)
    cfg = FlowConfig(deep_layers=2, shallow_blocks=1, shallow_layers=1, dim=64, head_dim=16, latent_channels=2,
                     latent_size=4, num_classes=4, noise_std=0.05, class_dropout=0.1)
    flow = STARFlow(cfg)
    data = torch.Generator().manual_seed(1)
    test_x, test_y = structured_latents(512, data)
    fixed = torch.Generator().manual_seed(2)

    def held_out() -> float:
        flow.eval()
        with torch.no_grad():
            value = float(flow_loss(flow, test_x, test_y, cfg.noise_std, torch.Generator().manual_seed(3)))
        flow.train()
        return value

    before = held_out()
    optimiser = torch.optim.AdamW(flow.parameters(), lr=2e-3)
    for _ in range(300):
        x, y = structured_latents(64, fixed)
        loss = flow_loss(flow, x, y, cfg.noise_std)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = held_out()
    # The best per-dimension Gaussian (each coordinate's own mean and std) ignores correlations.
    noisy = test_x + cfg.noise_std * torch.randn(test_x.shape, generator=torch.Generator().manual_seed(3))
    diagonal = float((0.5 * math.log(2 * math.pi) + noisy.std(0).log() + 0.5).mean())
    print(f"held-out NLL/dim {before:.3f} -> {after:.3f}; best diagonal Gaussian {diagonal:.3f}")
    assert before > 1.0 and after < before - 1.0, (before, after)
    assert after < diagonal - 1.0, (after, diagonal)


def test_bad_config_values_name_their_key():
    with pytest.raises(ConfigError, match="flow.dim"):
        STARFlow(FlowConfig(**{**TINY, "dim": 30}))
    with pytest.raises(ConfigError, match="flow.latent_channels"):
        STARFlow(FlowConfig(**{**TINY, "latent_channels": None}))
    with pytest.raises(ConfigError, match="flow.patch_size"):
        FlowConfig(**{**TINY, "patch_size": 3}).resolved()
    with pytest.raises(ConfigError, match="flow.shallow_layers"):
        FlowConfig(**{**TINY, "shallow_layers": 0}).resolved()
    with pytest.raises(ConfigError, match="cfg_scale"):
        FlowSamplerConfig(cfg_scale=0.0).validate()


def test_the_starflow_default_sizes_match_the_published_1_4b():
    for c, side, patch, grid in ((32, 16, 1, 16), (4, 32, 2, 16), (4, 32, 1, 32)):  # FAE, SD-VAE latents
        for condition in ("all", "deep"):
            flow = build_flow(FlowConfig(size="XL", latent_channels=c, latent_size=side, patch_size=patch,
                                         condition=condition), "meta")
            assert flow.config.grid == (grid, grid)
            assert 1.40e9 < flow.num_params() < 1.45e9


# ---------------------------------------------------------------- through the stage, export and CLI


def test_diffusion_run_configs_keep_their_saved_form_and_misplaced_sections_are_refused():
    saved = saved_form(load_config(GeneratorRunConfig, "imagenet256/lightningdit_xl1.yaml", []))
    assert not {"kind", "flow", "flow_sampling"} & set(saved)  # run folders written before still resume
    flow = saved_form(load_config(GeneratorRunConfig, "imagenet256/starflow_fae.yaml", []))
    assert flow["kind"] == "flow" and flow["flow"]["latent_channels"] == 32
    with pytest.raises(ConfigError, match="section 'flow' is set, but kind is 'diffusion'"):
        load_config(GeneratorRunConfig, None, ["flow.dim=64"])
    with pytest.raises(ConfigError, match="section 'sampling' is set, but kind is 'flow'"):
        load_config(GeneratorRunConfig, "imagenet256/starflow_fae.yaml", ["sampling.steps=10"])
    with pytest.raises(ConfigError, match="flow.head_dim"):
        load_config(GeneratorRunConfig, "imagenet256/starflow_fae.yaml", ["flow.head_dim=6"])


@pytest.mark.parametrize("name,count,tokens", [("starflow_fae", "1.413B", 256), ("starflow_sdvae", "1.412B", 1024)])
def test_dry_run_prints_the_count_next_to_the_published_one(capsys, tmp_path, name, count, tokens):
    # no latent cache there: the stage is described, the checklist names the cache, exit 2
    assert fae_main(["train", "generator", "--config", f"imagenet256/{name}.yaml", "--dry-run",
                     f"data.cache={tmp_path / 'latents'}"]) == 2
    out = capsys.readouterr().out
    assert "MISSING  latent cache (data.cache)" in out
    assert "STARFlow-XL/1" in out and f"({tokens} tokens)" in out  # patch 1 on both (TarFlow_XLv2_1)
    assert f"{count} parameters; published: 1.4B" in out
    assert "conditioning deep blocks, class as prefix token); soft clip 4 on affine" in out


def test_a_flow_export_round_trips_and_samples_the_same(tmp_path):
    torch.manual_seed(4)
    gen = FlowGenerator(FlowConfig(**TINY), latent_mean=torch.randn(3), latent_std=torch.rand(3) + 0.5,
                        sampling=FlowSamplerConfig(cfg_scale=1.5), fae_identity={"identity": "abc"})
    randomize(gen.model).eval()
    folder = gen.save_pretrained(tmp_path / "flow")
    again = load_generator(tmp_path / "flow")
    assert isinstance(again, FlowGenerator) and again.sampling == gen.sampling
    assert again.config == gen.config and again.fae_identity == {"identity": "abc"}
    for (k, a), (k2, b) in zip(gen.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    labels = torch.tensor([0, 4, 2])
    first = gen.sample(range(3), labels, seed=5)
    torch.testing.assert_close(again.sample(range(3), labels, seed=5), first, rtol=0, atol=1e-6)
    # Sample i depends on (seed, index, label) only, not on the batch it is drawn in (up to the float
    # rounding of a different matmul shape, which is relative to the sample's size: values reach ~8 here).
    torch.testing.assert_close(gen.sample(range(3), labels, seed=5, batch_size=2), first, rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="holds a 'fae-flow-generator' export, not a 'fae-generator'"):
        Generator.from_pretrained(folder)


def test_bits_per_dim_of_fae_scale_latents_is_measured_in_the_normalised_scale():
    mean, std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 1.0])
    gen = FlowGenerator(FlowConfig(**TINY), latent_mean=mean, latent_std=std)  # identity flow: N(0, I)
    latents = mean.view(1, 3, 1, 1) + std.view(1, 3, 1, 1) * torch.randn(6, 3, 4, 4)
    normalised = (latents - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    expected = 0.5 * (normalised.square() + math.log(2 * math.pi)).flatten(1).mean(1) / math.log(2)
    torch.testing.assert_close(gen.bits_per_dim(latents, torch.zeros(6, dtype=torch.long)), expected)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A tiny FAE's latent cache, an untrained (step 0) and an 80-step flow run on it."""
    from test_generation_pipeline import cache_config, export_fae

    root = tmp_path_factory.mktemp("flow")
    export_fae(root / "fae", seed=0)
    cache_latents(cache_config(root, root / "cache"))

    def run(name: str, steps: int) -> dict:
        overrides = [f"data.cache={root / 'cache'}", f"data.fae={root / 'fae'}", f"train.run_dir={root / name}",
                     "kind=flow", "flow.deep_layers=2", "flow.shallow_blocks=1", "flow.shallow_layers=1",
                     "flow.dim=32", "flow.head_dim=8", "flow.num_classes=10", "flow.noise_std=0.1",
                     f"train.steps={steps}", "train.batch_size=32", "train.optim.lr=2e-3", "train.ema_decay=0.5",
                     "train.log_every=10", "train.ckpt_every=0", "train.eval_every=0", "train.progress=false",
                     "eval.grid_samples=4", "eval.loss_items=96"]
        return train(build_stage(load_config(GeneratorRunConfig, None, overrides)))

    return root, run("r0", 0), run("run", 80)


@pytest.mark.slow
def test_the_generator_stage_trains_the_flow_and_lowers_its_bits_per_dim(flow_run):
    root, untrained, result = flow_run
    before, after = untrained["eval"]["bits_per_dim"], result["eval"]["bits_per_dim"]
    assert after < before - 0.3, (before, after)
    assert result["eval"]["fixed_noise_loss"] == pytest.approx(after * math.log(2))
    assert (root / "run" / "samples" / "step_0000080.png").is_file()
    lines = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("main/bits_per_dim" in line for line in lines)
    gen, fae = load_generator(result["export"]), FAE.from_pretrained(root / "fae")
    assert isinstance(gen, FlowGenerator) and gen.fae_identity["identity"] == fae.identity()
    assert torch.equal(gen.latent_mean, fae.latent_mean) and torch.equal(gen.latent_std, fae.latent_std)
    model = json.loads((Path(result["export"]) / "config.json").read_text())["model"]
    assert (model["latent_channels"], model["latent_size"], model["deep_layers"]) == (4, 4, 2)


@pytest.mark.slow
def test_fae_sample_picks_the_flow_from_its_export(flow_run, capsys):
    root, _, result = flow_run
    out = root / "flow_samples.npz"
    args = ["sample", "--generator", result["export"], "--fae", str(root / "fae"), "--num", "8",
            "--classes", "1,2", "--batch-size", "4", "--out", str(out), "sampling.cfg_scale=2.0"]
    assert fae_main(args) == 0
    images, labels = read_sample_batch(out)
    assert images.shape == (8, 28, 28, 3) and np.bincount(labels, minlength=3).tolist() == [0, 4, 4]
    capsys.readouterr()
    # A diffusion sampler key is refused by name once the export shows the generator is a flow.
    assert fae_main(args[:-1] + ["sampling.steps=4"]) == 2
    assert "sampling.steps" in capsys.readouterr().err


@pytest.mark.slow
def test_fae_sample_decodes_with_the_finetuned_decoder_and_skips_the_score_step(flow_run, tmp_path, capsys):
    """``sampling.finetuned_decoder`` (STARFlow's finetuned_vae): the named export decodes the
    samples left noisy, i.e. the same images as passing it as --fae with the score step off."""
    from test_generation_pipeline import export_fae

    root, _, result = flow_run
    fae = FAE.from_pretrained(root / "fae")
    torch.manual_seed(9)
    with torch.no_grad():  # another pixel decoder for the same latent space (same identity)
        for p in fae.pixel_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    noisy = tmp_path / "noisy_decoder"
    fae.save_pretrained(noisy)
    common = ["sample", "--generator", result["export"], "--num", "4", "--classes", "1,2", "--batch-size", "4"]
    finetuned = [f"sampling.finetuned_decoder={noisy}"]
    assert fae_main(common + ["--fae", str(root / "fae"), "--out", str(tmp_path / "a.npz")] + finetuned) == 0
    assert fae_main(common + ["--fae", str(noisy), "--out", str(tmp_path / "b.npz"), "sampling.denoise=false"]) == 0
    assert fae_main(common + ["--fae", str(root / "fae"), "--out", str(tmp_path / "c.npz")]) == 0
    a, b, c = (read_sample_batch(tmp_path / f"{k}.npz")[0] for k in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # A decoder of another latent space is refused like a mismatched --fae.
    other = export_fae(tmp_path / "other_fae", seed=1)
    capsys.readouterr()
    assert fae_main(common + ["--fae", str(root / "fae"), "--out", str(tmp_path / "d.npz"),
                              f"sampling.finetuned_decoder={other}"]) == 2
    assert "other_fae" in capsys.readouterr().err


@pytest.mark.slow
def test_the_training_sample_grid_decodes_as_fae_sample_does(flow_run, tmp_path):
    """The flow stage's preview grid uses ``flow_sampling.finetuned_decoder`` (no score step) once
    that export exists, and the FAE with the score step before it does; a decoder of another
    latent space is refused, as by ``fae sample``."""
    from test_generation_pipeline import export_fae

    root, _, result = flow_run
    generator = load_generator(result["export"])
    fae = FAE.from_pretrained(root / "fae")
    fae.save_pretrained(tmp_path / "noisy_decoder")

    def stage(finetuned: Path):
        overrides = [f"data.cache={root / 'cache'}", f"data.fae={root / 'fae'}", f"train.run_dir={tmp_path / 'run'}",
                     "kind=flow", "flow.num_classes=10", f"flow_sampling.finetuned_decoder={finetuned}"]
        return build_stage(load_config(GeneratorRunConfig, None, overrides))

    decoder, sampling = stage(tmp_path / "noisy_decoder").grid_decoder("cpu", generator)
    assert sampling.finetuned_decoder == str(tmp_path / "noisy_decoder") and not sampling.score_step
    decoder, sampling = stage(tmp_path / "not_trained_yet").grid_decoder("cpu", generator)
    assert sampling.finetuned_decoder is None and sampling.score_step
    assert decoder.identity() == fae.identity()
    other = export_fae(tmp_path / "other_fae", seed=1)
    with pytest.raises(LatentCacheError, match="other_fae"):
        stage(other).grid_decoder("cpu", generator)
