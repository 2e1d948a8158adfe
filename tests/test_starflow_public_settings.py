"""STARFlow's public settings (github.com/apple/ml-starflow), each a config choice of the flow:
``condition: deep`` (cond_top_only), ``class_entry: prefix`` (the label as a one-token prefix),
``soft_clip_on: affine`` (soft_clip on the whole affine output), patch 1 on SD-VAE latents (1,024
tokens, TarFlow_XLv2_1) and ``finetuned_decoder`` (finetuned_vae) at sampling. Values, exact
inverses and KV-cache agreement with every option on; the defaults keep the saved configs as before.
Tiny configs in float64 on the CPU."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from fae.config import load_config, to_dict
from fae.errors import ConfigError
from fae.generation.decode import decoder_folder
from fae.generation.flow import STARFlow, TARFlowBlock, build_flow
from fae.generation.flow_config import FlowConfig, FlowSamplerConfig
from fae.generation.model import patchify
from fae.generation.samplers import SamplerConfig
from fae.training.stages.generator import GeneratorRunConfig

from test_generation_flow import TINY, randomize, tiny_flow

pytestmark = pytest.mark.usefixtures("one_thread")

PUBLIC = dict(condition="deep", class_entry="prefix", soft_clip_on="affine", log_scale_clip=1.5)


def block_outputs(flow: STARFlow, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The output of every block (data -> noise) for latents x [B, c, h, w]: [B, N, C] each."""
    h = patchify(x, flow.config.patch_size)  # [B, N, C]
    outs = []
    with torch.no_grad():
        for block in flow.blocks:
            h, _ = block(h, labels)
            outs.append(h)
    return outs


# --------------------------------------------------------------------------- cond_top_only


@pytest.mark.parametrize("class_entry", ["start", "prefix"])
def test_cond_top_only_a_new_class_changes_only_the_deep_blocks_output(class_entry):
    flow = tiny_flow(condition="deep", class_entry=class_entry)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    first = block_outputs(flow, x, torch.tensor([0, 1]))
    second = block_outputs(flow, x, torch.tensor([3, 4]))
    for shallow_a, shallow_b in zip(first[:-1], second[:-1]):
        assert torch.equal(shallow_a, shallow_b)  # unconditional: bitwise the same
    assert (first[-1] - second[-1]).abs().max() > 1e-3  # the deep block reads the class
    every = tiny_flow(condition="all", class_entry=class_entry)
    assert (block_outputs(every, x, torch.tensor([0, 1]))[0]
            - block_outputs(every, x, torch.tensor([3, 4]))[0]).abs().max() > 1e-3


def test_cond_top_only_drops_exactly_the_shallow_class_tables():
    sizes = dict(size="XL", latent_channels=32, latent_size=16)
    every = build_flow(FlowConfig(**sizes, condition="all"), "meta").num_params()
    deep = build_flow(FlowConfig(**sizes, condition="deep"), "meta").num_params()
    assert every - deep == 5 * 1001 * 2048  # 5 shallow blocks x (1000 classes + null) x width


def test_cond_top_only_guides_the_deep_block_and_leaves_the_shallow_ones_unguided():
    """With the shallow blocks unconditional, guidance can only act in the deep block: guided
    sampling equals inverting the deep block guided, then the shallow blocks plainly."""
    flow = tiny_flow(condition="deep", class_entry="prefix")
    noise, labels = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([1, 3])
    null = flow.conditioner.null_like(labels)
    with torch.no_grad():
        guided = flow.inverse(noise, labels, null, cfg_scale=2.0)
        h = patchify(noise, 1)  # [B, N, C]
        h = flow.blocks[-1](h, labels, inverse=True, null_cond=null, cfg_scale=2.0)
        for block in reversed(flow.blocks[:-1]):
            h = block(h, None, inverse=True)
    torch.testing.assert_close(patchify(guided, 1), h, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ class prefix


def test_the_class_prefix_is_one_unrotated_token_before_the_start_token():
    torch.manual_seed(0)
    plain = TARFlowBlock(3, 16, 1, 8, 2.0, "vit", False, (2, 2), False, num_classes=4)
    prefixed = TARFlowBlock(3, 16, 1, 8, 2.0, "vit", False, (2, 2), False, num_classes=4, class_entry="prefix")
    assert (plain.prefix, prefixed.prefix) == (0, 1)
    # RoPE: the class position has angle 0 (cos 1, sin 0); the tokens keep their rotations.
    assert torch.equal(prefixed.rope.cos[0], torch.ones(4)) and torch.equal(prefixed.rope.sin[0], torch.zeros(4))
    assert torch.equal(prefixed.rope.cos[1:], plain.rope.cos) and torch.equal(prefixed.rope.sin[1:], plain.rope.sin)
    # The inputs: [class embedding, start token, x_0 .. x_{N-2}].
    xs, labels = torch.randn(2, 4, 3), torch.tensor([2, 4])
    inputs = prefixed._inputs(xs, labels)  # [B, 1 + N, D]
    assert inputs.shape == (2, 5, 16)
    torch.testing.assert_close(inputs[:, 0], prefixed.conditioner.table.weight[labels])
    torch.testing.assert_close(inputs[:, 1], prefixed.start[0].expand(2, -1))
    torch.testing.assert_close(inputs[:, 2:], prefixed.proj_in(xs[:, :-1]))
    # An unconditional block has no prefix whatever class_entry says (cond_top_only's shallow blocks).
    assert TARFlowBlock(3, 16, 1, 8, 2.0, "vit", False, (2, 2), False, num_classes=0,
                        class_entry="prefix").prefix == 0


def test_with_a_prefix_the_first_token_depends_on_the_class_through_attention_alone():
    """The start token is the same for every class; token 0's affine still changes with the class
    (every position attends to the class token), and a token's output never reads later tokens."""
    torch.manual_seed(1)
    block = randomize(TARFlowBlock(2, 16, 1, 8, 2.0, "vit", False, (2, 2), False, num_classes=3,
                                   class_entry="prefix"), 0.5).double().eval()
    x = torch.randn(1, 4, 2, dtype=torch.float64)
    with torch.no_grad():
        z0, _ = block(x, torch.tensor([0]))
        z1, _ = block(x, torch.tensor([1]))
    assert (z0[:, 0] - z1[:, 0]).abs().max() > 1e-3
    jac = torch.autograd.functional.jacobian(lambda v: block(v.view(1, 4, 2), torch.tensor([2]))[0].flatten(),
                                             x.flatten()).view(4, 2, 4, 2)
    for i in range(3):
        assert jac[i, :, i + 1:].abs().max() == 0  # triangular: the prefix adds no path from later tokens
    _, logdet = block(x, torch.tensor([2]))
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac.reshape(8, 8))[1], rtol=0, atol=1e-9)


def test_the_prefix_adds_no_parameters():
    sizes = dict(size="XL", latent_channels=32, latent_size=16, condition="deep")
    start = build_flow(FlowConfig(**sizes, class_entry="start"), "meta").num_params()
    assert build_flow(FlowConfig(**sizes, class_entry="prefix"), "meta").num_params() == start


# -------------------------------------------------------------------------------- soft clip


@pytest.mark.parametrize("target", ["log_scale", "affine"])
def test_the_soft_clip_bounds_the_log_scales_and_with_affine_the_shifts_too(target):
    block = TARFlowBlock(3, 16, 1, 8, 2.0, "vit", False, (2, 2), False, num_classes=0, log_scale_clip=4.0,
                         soft_clip_on=target).double()
    with torch.no_grad():
        block.proj_out.bias.copy_(torch.tensor([10.0, -10.0, 1.0, 10.0, -10.0, 1.0], dtype=torch.float64))
    mu, a = block._affine(torch.randn(2, 5, 16, dtype=torch.float64))  # proj_out weights are 0: mu, a = bias
    clipped = 4.0 * torch.tanh(torch.tensor([10.0, -10.0, 1.0], dtype=torch.float64) / 4.0)
    torch.testing.assert_close(a, clipped.expand(2, 5, 3))
    assert a.abs().max() < 4.0
    if target == "affine":
        torch.testing.assert_close(mu, clipped.expand(2, 5, 3))
        assert mu.abs().max() < 4.0
    else:
        torch.testing.assert_close(mu, torch.tensor([10.0, -10.0, 1.0], dtype=torch.float64).expand(2, 5, 3))


def test_the_affine_clip_is_near_the_identity_for_small_outputs():
    block = TARFlowBlock(2, 16, 1, 8, 2.0, "vit", False, (2, 2), False, num_classes=0, log_scale_clip=4.0,
                         soft_clip_on="affine").double()
    with torch.no_grad():
        block.proj_out.bias.copy_(torch.tensor([0.01, -0.02, 0.03, 0.0], dtype=torch.float64))
    mu, a = block._affine(torch.zeros(1, 1, 16, dtype=torch.float64))
    torch.testing.assert_close(torch.cat([mu, a], -1).flatten(), block.proj_out.bias.detach(), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------- every option on


OPTIONS = list(itertools.product(["all", "deep"], ["start", "prefix"], ["log_scale", "affine"], [1, 2]))


@pytest.mark.parametrize("condition,class_entry,soft_clip_on,patch", OPTIONS)
def test_a_tiny_round_trip_inverts_exactly_with_each_option(condition, class_entry, soft_clip_on, patch):
    flow = tiny_flow(condition=condition, class_entry=class_entry, soft_clip_on=soft_clip_on,
                     log_scale_clip=1.5, patch_size=patch)
    x, labels = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([1, 4])
    with torch.no_grad():
        z, _ = flow(x, labels)
        back = flow.inverse(z, labels)
        back_uncached = flow.inverse(z, labels, kv_cache=False)
    assert (z - x).abs().max() > 0.1
    torch.testing.assert_close(back, x, rtol=0, atol=1e-8)
    torch.testing.assert_close(back_uncached, x, rtol=0, atol=1e-8)


def test_the_whole_flows_likelihood_matches_the_jacobian_with_the_public_settings():
    flow = tiny_flow(**PUBLIC, latent_channels=1, latent_size=2, dim=16)
    x, label = torch.randn(1, 1, 2, 2, dtype=torch.float64), torch.tensor([3])
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 1, 2, 2), label)[0].flatten(), x.flatten())
    z, _ = flow(x, label)
    expected = torch.linalg.slogdet(jac)[1] - 0.5 * (z.square() + math.log(2 * math.pi)).sum()
    torch.testing.assert_close(flow.log_prob(x, label)[0], expected, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------- SD-VAE patch 1


def test_the_sdvae_baseline_at_patch_1_has_1024_tokens_of_4_values():
    cfg = load_config(GeneratorRunConfig, "imagenet256/starflow_sdvae.yaml", []).flow.resolved()
    assert (cfg.patch_size, cfg.grid, cfg.token_channels) == (1, (32, 32), 4)
    flow = build_flow(cfg, "meta")
    assert flow.blocks[0].rope.cos.shape == (32 * 32, 32)  # 1,024 positions (shallow: no class token)
    assert flow.blocks[-1].rope.cos.shape == (1 + 32 * 32, 32)  # the deep block's class token first
    # Patch 1 vs 2 differs only in proj_in (4 vs 16 inputs) and proj_out (8 vs 32 outputs) of 6 blocks.
    patch2 = build_flow(FlowConfig(**{**to_dict(cfg), "patch_size": 2}), "meta")
    assert patch2.config.grid == (16, 16)
    assert patch2.num_params() - flow.num_params() == 6 * ((16 - 4) * 2048 + 2048 * (32 - 8) + (32 - 8))


def test_the_imagenet_configs_select_starflows_public_settings():
    for name in ("starflow_fae", "starflow_sdvae"):
        run = load_config(GeneratorRunConfig, f"imagenet256/{name}.yaml", [])
        flow = run.flow
        assert (flow.condition, flow.class_entry, flow.soft_clip_on, flow.log_scale_clip) == (
            "deep", "prefix", "affine", 4.0), name
        assert (flow.noise_std, flow.class_dropout, flow.patch_size) == (0.3, 0.1, 1), name
        assert run.flow_sampling.finetuned_decoder is None  # no fine-tuned decoder ships


# --------------------------------------------------------------------------- finetuned decoder


def test_a_finetuned_decoder_takes_the_noisy_samples_without_the_score_step():
    """Identity flow: the score step maps x to x (1 - sigma^2); with a fine-tuned decoder the
    samples are the inverted noise itself, as STARFlow skips denoising with finetuned_vae."""
    flow = STARFlow(FlowConfig(**{**TINY, "noise_std": 0.3})).double().eval()
    x, labels = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([1, 2])
    torch.testing.assert_close(flow.sample(x, labels, FlowSamplerConfig()), x * (1 - 0.09))
    finetuned = FlowSamplerConfig(finetuned_decoder="runs/noisy_decoder/export")
    assert not finetuned.score_step and FlowSamplerConfig().score_step
    assert torch.equal(flow.sample(x, labels, finetuned), x)


def test_decoder_folder_picks_the_finetuned_export_for_a_flow_only():
    assert decoder_folder(FlowSamplerConfig(), "fae/export") == "fae/export"
    assert decoder_folder(FlowSamplerConfig(finetuned_decoder="noisy/export"), "fae/export") == "noisy/export"
    assert decoder_folder(SamplerConfig(), "fae/export") == "fae/export"  # diffusion: no such key


# ---------------------------------------------------------------------- defaults and saved form


def test_the_new_keys_are_left_out_of_saved_configs_at_their_defaults():
    """Run folders, exports and experiment keys written before these keys existed stay the same."""
    assert not {"class_entry", "soft_clip_on"} & set(to_dict(FlowConfig()))
    assert "finetuned_decoder" not in to_dict(FlowSamplerConfig())
    saved = to_dict(FlowConfig(class_entry="prefix", soft_clip_on="affine"))
    assert (saved["class_entry"], saved["soft_clip_on"]) == ("prefix", "affine")
    assert to_dict(FlowSamplerConfig(finetuned_decoder="d"))["finetuned_decoder"] == "d"
    experiment = load_config(GeneratorRunConfig, "experiments/starflow_generator.yaml", [])
    assert (experiment.flow.condition, experiment.flow.class_entry, experiment.flow.soft_clip_on) == (
        "all", "start", "log_scale")  # the experiment keeps its earlier settings


def test_bad_choices_name_their_key():
    for key in ("condition", "class_entry", "soft_clip_on"):
        with pytest.raises(ConfigError, match=f"flow.{key}"):
            FlowConfig(**{**TINY, key: "sideways"}).resolved()
    with pytest.raises(ConfigError, match="flow.class_entry"):
        load_config(GeneratorRunConfig, "imagenet256/starflow_fae.yaml", ["flow.class_entry=suffix"])
