"""The diffusion transformer: paper sizes, block flavours, patching, adaLN-Zero, export round trip."""
import pytest
import torch
from torch import nn

from fae.errors import CheckpointError, ConfigError
from fae.generation import Generator, GeneratorConfig, build_generator
from fae.generation.conditioning import ClassConditioner
from fae.generation.samplers import SamplerConfig
from fae.generation.transport import TransportConfig


def tiny(**overrides) -> GeneratorConfig:
    base = dict(depth=2, dim=32, heads=2, latent_channels=4, latent_size=4, num_classes=3)
    base.update(overrides)
    return GeneratorConfig(**base)


@pytest.mark.parametrize("style", ["sit", "lightningdit"])
def test_xl1_on_16x16x32_latent_has_the_papers_675m_parameters(style):
    model = build_generator(GeneratorConfig(size="XL", style=style, patch_size=1, latent_channels=32,
                                            latent_size=16), device="meta")
    assert model.num_params() == pytest.approx(675.26e6, rel=0.01)
    assert (len(model.blocks), model.config.dim, model.config.heads) == (28, 1152, 16)


def test_styles_and_each_switch_alone():
    sit = build_generator(tiny(style="sit"), "meta")
    assert isinstance(sit.blocks[0].norm1, nn.LayerNorm) and sit.rope is None
    assert hasattr(sit.blocks[0].mlp, "fc1")
    light = build_generator(tiny(style="lightningdit"), "meta")
    assert isinstance(light.blocks[0].norm1, nn.RMSNorm) and light.rope is not None
    assert hasattr(light.blocks[0].mlp, "w12")
    # Table 6 ablation: one change at a time on top of SiT.
    only_rope = build_generator(tiny(style="sit", rope=True), "meta")
    assert only_rope.rope is not None and isinstance(only_rope.blocks[0].norm1, nn.LayerNorm)
    only_rms = build_generator(tiny(style="sit", norm="rms"), "meta")
    assert isinstance(only_rms.blocks[0].norm1, nn.RMSNorm) and only_rms.rope is None
    only_swiglu = build_generator(tiny(style="sit", mlp="swiglu"), "meta")
    assert hasattr(only_swiglu.blocks[0].mlp, "w12") and only_swiglu.rope is None
    qk = build_generator(tiny(style="lightningdit", qk_norm=True), "meta")
    assert isinstance(qk.blocks[0].attn.q_norm, nn.RMSNorm)


@pytest.mark.parametrize("patch", [1, 2])
def test_patchify_round_trip_and_output_shape(patch):
    torch.manual_seed(0)
    model = build_generator(tiny(patch_size=patch, style="lightningdit"))
    z = torch.randn(3, 4, 4, 4)
    tokens = model.patchify(z)
    assert tokens.shape == (3, (4 // patch) ** 2, patch * patch * 4)
    assert torch.equal(model.unpatchify(tokens), z)
    assert model(z, torch.rand(3), torch.tensor([0, 1, 3])).shape == z.shape


def test_adaln_zero_init_outputs_zero_and_every_part_gets_gradients():
    torch.manual_seed(0)
    model = build_generator(tiny(pos_embed="learned"))
    z, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([0, 2])
    out = model(z, t, y)
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    # After one SGD step on a non-trivial target, the output moves off zero.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(z, t, y) - z).square().mean().backward()
    opt.step()
    assert model(z, t, y).abs().sum() > 0


def test_label_dropout_uses_the_null_class_only_in_training():
    torch.manual_seed(0)
    cond = ClassConditioner(num_classes=5, dim=8, dropout=0.5)
    labels = torch.zeros(4000, dtype=torch.long)
    dropped = (cond(labels) == cond.table.weight[5]).all(dim=1).float().mean()
    assert 0.45 < dropped < 0.55
    cond.eval()
    assert not (cond(labels) == cond.table.weight[5]).all(dim=1).any()
    with pytest.raises(ConfigError, match="class labels"):
        cond.check(torch.tensor([6]))


def test_invalid_shapes_raise_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="model.heads"):
        build_generator(tiny(dim=30, heads=4), "meta")
    with pytest.raises(ConfigError, match="model.patch_size"):
        build_generator(tiny(patch_size=3), "meta")
    with pytest.raises(ConfigError, match="model.latent_size"):
        build_generator(tiny(patch_size=2, latent_size=5), "meta")


def test_generator_export_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    gen = Generator(tiny(style="lightningdit"), TransportConfig(shift=0.4),
                    latent_mean=torch.arange(4.0), latent_std=torch.full((4,), 2.0),
                    sampling=SamplerConfig(steps=3, cfg_scale=2.0), fae_identity={"hash": "abc"})
    for p in gen.model.parameters():  # make the zero-initialised parts non-trivial
        p.data.normal_(std=0.1)
    gen.save_pretrained(tmp_path / "run" / "export")
    loaded = Generator.from_pretrained(tmp_path / "run")  # a run folder means its EMA export
    assert loaded.transport.shift == 0.4 and loaded.sampling.cfg_scale == 2.0
    assert loaded.fae_identity == {"hash": "abc"}
    labels = torch.tensor([0, 1, 2])
    assert torch.equal(gen.eval().sample(range(3), labels), loaded.sample(range(3), labels))
    z = torch.randn(2, 4, 4, 4)
    assert torch.allclose(loaded.denormalize(loaded.normalize(z)), z, atol=1e-6)
    with pytest.raises(CheckpointError, match="config.json"):
        Generator.from_pretrained(tmp_path / "missing")


def test_latent_shape_comes_from_upstream_and_explicit_values_must_agree():
    bare = GeneratorConfig(depth=2, dim=32, heads=2)
    with pytest.raises(ConfigError, match="model.latent_channels"):
        bare.resolved()  # no default shape: it is the FAE's
    filled = bare.with_latent_shape((4, 6, 6), "the FAE export 'x'")
    assert filled.latent_shape == (4, 6, 6) and filled.resolved().latent_shape == (4, 6, 6)
    assert tiny().with_latent_shape((4, 4, 4), "x").latent_shape == (4, 4, 4)  # agreeing values pass
    with pytest.raises(ConfigError, match="'model.latent_size' is 4.*'y'"):
        tiny().with_latent_shape((4, 8, 8), "the FAE export 'y'")
    with pytest.raises(ConfigError, match="'model.latent_channels' is 4"):
        tiny().with_latent_shape((32, 4, 4), "x")
    with pytest.raises(ConfigError, match="non-square"):
        bare.with_latent_shape((4, 4, 6), "x")
