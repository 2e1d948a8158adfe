"""`fae experiment` end to end on a tiny latent-space experiment (through fae.cli.main).

The experiment file is written here: the demo's base config with its ``--quick`` list and the
tiny settings of tests/test_demo.py, the four latent spaces as arms plus the main arm's seed
replicate, two checkpoints each, a few dozen samples. Checked: every arm trained (its loss fell),
arms differ only in the declared variable, the report's numbers are results.json's, a re-run skips
every arm, and a changed arm is the only one that reruns.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from fae.cli import main
from fae.config import SHIPPED_CONFIGS
from fae.errors import ConfigError
from fae.evaluation.intervals import wilson

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = [
    "backbone.resolution=64",
    "autoencoder.overrides.train.steps=60", "autoencoder.overrides.data.limit=300",
    "autoencoder.overrides.eval.limit=100", "autoencoder.overrides.stats_images=300",
    "autoencoder.overrides.train.log_every=10", "autoencoder.overrides.eval.probe=false",
    "autoencoder.overrides.train.optim.warmup_steps=10",
    "pixel_decoder_ib.overrides.train.steps=120", "pixel_decoder_ib.overrides.train.batch_size=16",
    "pixel_decoder_ib.overrides.train.ckpt_every=120", "pixel_decoder_ib.overrides.train.log_every=20",
    "pixel_decoder_ib.overrides.train.optim.warmup_steps=10", "pixel_decoder_ib.overrides.train.optim.lr=0.001",
    "pixel_decoder_ib.overrides.loss.gan_start_step=100000", "pixel_decoder_ib.overrides.noise.scale_images=32",
    "pixel_decoder_ib.overrides.eval.limit=16", "pixel_decoder_ib.overrides.data.limit=200",
    "pixel_decoder_ii.overrides.data.limit=200", "pixel_decoder_ii.overrides.train.steps=10",
    "pixel_decoder_ii.overrides.train.batch_size=8", "pixel_decoder_ii.overrides.train.ckpt_every=10",
    "pixel_decoder_ii.overrides.train.log_every=5", "pixel_decoder_ii.overrides.eval.limit=16",
    "pixel_decoder_ii.overrides.train.optim.warmup_steps=2",
    "pixel_autoencoder.overrides.train.steps=40", "pixel_autoencoder.overrides.train.log_every=5",
    "pixel_autoencoder.overrides.train.batch_size=16", "pixel_autoencoder.overrides.data.limit=300",
    "pixel_autoencoder.overrides.stats_images=300", "pixel_autoencoder.overrides.eval.limit=16",
    "pixel_autoencoder.overrides.model.width=16",
    "latents.limit=300",
    "generator.overrides.train.batch_size=32", "generator.overrides.train.log_every=5",
    "generator.overrides.eval.grid_samples=0", "generator.overrides.model.depth=2",
    "generator.overrides.model.dim=64", "generator.overrides.train.optim.warmup_steps=5",
    "eval.sampling.steps=6", "eval.classifier_train_images=2000", "eval.classifier_steps=60",
]

ARMS = ["fae", "tokens", "pixels", "pixel-ae"]


def experiment_file(folder: Path, pixels_shift: float | None = None) -> Path:
    arms = [{"name": a, "set": [f"space={a}"]} for a in ARMS]
    if pixels_shift is not None:
        arms[2]["set"].append(f"generator.overrides.transport.shift={pixels_shift}")
    config = {"title": "tiny latent space", "question": "Tiny?", "demo": str(SHIPPED_CONFIGS / "demo" / "demo.yaml"),
              "variable": ["space", "generator.overrides.transport.shift"],
              "overrides": [f"pixel_autoencoder.config={SHIPPED_CONFIGS / 'experiments' / 'pixel_autoencoder.yaml'}"],
              "arms": arms, "main": "fae", "seeds": [1], "seed_keys": ["generator.overrides.train.seed"],
              "evaluation": {"steps": [30, 60], "fid_samples": 20, "reference_images": 20, "batch_size": 20,
                             "grid_per_class": 1},
              "claims": [{"better": "fae", "worse": "tokens", "source": "Table 5"},
                         {"better": "fae", "worse": "pixel-ae", "source": "STARFlow"}],
              "quick_arms": TINY}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("experiment")
    config = experiment_file(folder)
    assert main(["experiment", "--config", str(config), "--quick", "--out", str(folder / "runs")]) == 0
    return folder, config


def results(folder: Path) -> dict:
    return json.loads((folder / "runs" / "tiny" / "results.json").read_text())


def test_every_arm_trained_and_was_scored(experiment):
    record = results(experiment[0])
    assert list(record["arms"]) == ARMS + ["fae-s1", "tokens-s1", "pixel-ae-s1"]  # main + claimed arms
    for arm in record["arms"].values():
        loss = arm["generator_loss"]
        assert loss["last_step"] == 60 and loss["last"] < loss["first"], arm["name"]
        assert [p["step"] for p in arm["curve"]] == [30, 60]
        for point in arm["curve"]:
            assert point["fid"] > 0 and 0 <= point["class_accuracy"] <= 1 and point["samples"] == 20
            lo, hi = point["fid_ci"]  # bootstrap 95% of the scored features; Wilson 95% of 20 samples
            assert lo < point["fid"] < hi
            assert point["class_accuracy_ci"] == list(wilson(round(20 * point["class_accuracy"]), 20))
    pixel_ae = record["arms"]["pixel-ae"]["stage_losses"]["pixel_autoencoder"]
    assert pixel_ae["last"] < pixel_ae["first"]
    shapes = {a: tuple(record["arms"][a]["latent_shape"]) for a in ARMS}
    c, h, w = shapes["fae"]
    assert shapes["pixel-ae"] == (c, h, w)  # the SD-VAE stand-in has the FAE's latent shape
    assert shapes["tokens"][1:] == shapes["pixels"][1:] == (h, w)  # same token count everywhere
    assert shapes["tokens"][0] > c and shapes["pixels"][0] * h * w >= 28 * 28


def test_arms_differ_only_in_the_declared_variable(experiment):
    record = results(experiment[0])
    for name in ARMS[1:]:
        assert record["arms"][name]["diff"] == {"space": ["fae", name]}
    assert record["arms"]["fae"]["diff"] == {}
    assert record["arms"]["fae-s1"]["diff"] == {"generator.overrides.train.seed": [None, 1]}
    assert record["arms"]["tokens-s1"]["diff"] == {"space": ["fae", "tokens"], "generator.overrides.train.seed": [None, 1]}
    assert record["arms"]["tokens-s1"]["replicate_of"] == "tokens"
    stored = json.loads((experiment[0] / "runs" / "tiny" / "tokens" / "arm.json").read_text())
    assert stored["diff"] == {"space": ["fae", "tokens"]}


def test_arms_outside_the_variable_are_refused(tmp_path):
    from fae.experiment.config import load_experiment, resolve_arms
    from fae.experiment.run import run_experiment

    path = experiment_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["arms"][1]["set"].append("latents.limit=100")
    path.write_text(yaml.safe_dump(data))
    exp, rest = load_experiment(path, quick=True)
    with pytest.raises(ConfigError, match=r"'tokens' differs .* \['latents.limit'\]"):
        resolve_arms(exp, path, True, rest)
    data["arms"][1]["set"][-1] = "generator.overrides.trian.steps=3"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="arm 'tokens'.*trian"):
        resolve_arms(*load_experiment(path, quick=True)[:1], path, True)
    fresh = experiment_file(tmp_path / "again" if (tmp_path / "again").mkdir() is None else tmp_path)
    exp, rest = load_experiment(fresh, quick=True, overrides=["seeds=[0]"])  # the generator's own seed
    arms, base = resolve_arms(exp, fresh, True, rest)
    with pytest.raises(ConfigError, match="'fae-s0' trains exactly what the arm 'fae'"):
        run_experiment(exp, arms, base, "again", tmp_path / "runs", quick=True)
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="evaluation.stpes"):
        load_experiment(path, quick=True, overrides=["evaluation.stpes=[1]"])
    with pytest.raises(ConfigError, match="'evaluation.replicate_steps': 'last' is not one of 'all', 'final'"):
        load_experiment(path, quick=True, overrides=["evaluation.replicate_steps=last"])


def test_report_numbers_are_the_stored_results(experiment):
    from fae.experiment.report import fid_text, point_text

    record = results(experiment[0])
    page = (experiment[0] / "runs" / "tiny" / "report.html").read_text()
    cells = lambda *values: "".join(f"<td>{v}</td>" for v in values)  # noqa: E731
    for arm in record["arms"].values():
        for p in arm["curve"]:
            assert "<tr>" + cells(arm["name"], p["step"], point_text(p, "fid"), point_text(p, "class_accuracy")) + "</tr>" in page
    for v in record["verdicts"]:
        f = v["fid"]
        assert cells(f"{fid_text(f['better'])} vs {fid_text(f['worse'])}", f["verdict"]) in page
        assert f["verdict"] in ("agrees", "disagrees", "inside the noise") and f["decided_by"]
    assert f"real-vs-real floor {fid_text(record['floor']['fid'])} (N = 20)" in page
    assert record["spread"]["arms"] == ["fae", "fae-s1"]
    assert record["groups"]["tokens"]["fid"]["values"] == [record["arms"][a]["final"]["fid"] for a in ("tokens", "tokens-s1")]
    assert record["arms"]["fae"]["stages"]["autoencoder"].startswith("_stages/autoencoder-")  # no machine path
    assert str(experiment[0]) not in (experiment[0] / "runs" / "tiny" / "results.json").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", page)) >= 3  # two curves + samples, inlined


def test_rerun_skips_finished_arms_and_reruns_only_a_changed_one(experiment, capsys):
    folder, config = experiment
    out = str(folder / "runs")
    capsys.readouterr()

    def no_inception(*args, **kwargs):
        raise AssertionError("a re-run embedded images: the reference, floor and checkpoint scores are cached")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fae.evaluation.scorer.load_inception", no_inception)
        assert main(["experiment", "--config", str(config), "--quick", "--out", out]) == 0
    assert set(results(folder)["status"].values()) == {"skipped"}
    before = results(folder)["arms"]
    changed = experiment_file(folder, pixels_shift=1.0)
    assert main(["experiment", "--config", str(changed), "--quick", "--out", out]) == 0
    after = results(folder)
    assert after["status"] == {"fae": "skipped", "tokens": "skipped", "pixels": "ran", "pixel-ae": "skipped",
                               "fae-s1": "skipped", "tokens-s1": "skipped", "pixel-ae-s1": "skipped"}
    assert after["arms"]["pixels"]["diff"] == {"space": ["fae", "pixels"],
                                               "generator.overrides.transport.shift": [None, 1.0]}
    assert after["arms"]["fae"]["curve"] == before["fae"]["curve"]


def test_patch_space_round_trip_and_pixel_vae_shapes():
    import torch

    from fae.autoencoder.pixel_autoencoder import PixelAutoencoder, PixelAutoencoderConfig
    from fae.experiment.spaces import PatchSpace, floored_stats

    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    for grid in [(4, 4), (8, 8), (2, 2)]:  # 8x8 does not divide 28: padded to 32, cropped back
        space = PatchSpace(grid, 28)
        z = space.encode(images)
        assert z.shape == (3, *space.latent_shape) and z.shape[2:] == grid
        assert torch.equal((space.decode(z) * 255).round().to(torch.uint8), images)
    mean, std = floored_stats(torch.zeros(4), torch.tensor([0.0, 1.0, 2.0, 1.0]))
    assert std.min() == pytest.approx(0.1) and std.max() == 2.0
    model = PixelAutoencoder(PixelAutoencoderConfig(latent_channels=8, grid=(8, 8), width=16))
    z = model.encode(images)
    assert z.shape == (3, 8, 8, 8) and model.decode(z).shape == (3, 1, 28, 28)


# ------------------------------------------------------------------ a flow generator's experiment

FLOW_TINY = [o for o in TINY if not o.startswith("generator.overrides.model.")] + [
    "generator.overrides.flow.dim=32", "generator.overrides.flow.head_dim=8",
    "generator.overrides.flow.deep_layers=1", "generator.overrides.flow.shallow_blocks=1",
    "generator.overrides.flow.shallow_layers=1"]


def test_a_flow_experiment_scores_bits_per_dim_and_reuses_the_stages(experiment, capsys):
    """`fae experiment starflow`'s shape on the tiny settings: STARFlow on FAE vs pixel-VAE latents,
    in the same root as the tiny latent-space experiment, so its FAE and pixel VAE are reused."""
    from fae.experiment.likelihood import gaussian_bits
    from fae.experiment.report import bits_text
    from fae.generation import FlowGenerator, load_generator

    folder, _ = experiment
    config = {"title": "tiny flow", "question": "Flow?", "demo": str(SHIPPED_CONFIGS / "demo" / "demo.yaml"),
              "variable": ["space"],
              "overrides": [f"pixel_autoencoder.config={SHIPPED_CONFIGS / 'experiments' / 'pixel_autoencoder.yaml'}",
                            f"generator.config={SHIPPED_CONFIGS / 'experiments' / 'starflow_generator.yaml'}"],
              "arms": [{"name": "fae", "set": ["space=fae"]}, {"name": "pixel-ae", "set": ["space=pixel-ae"]}],
              "main": "fae", "seeds": [1],
              "evaluation": {"steps": [30, 60], "fid_samples": 20, "reference_images": 20, "batch_size": 20,
                             "grid_per_class": 1, "likelihood_images": 60, "replicate_steps": "final"},
              "claims": [{"better": "fae", "worse": "pixel-ae", "source": "STARFlow"}],
              "quick_arms": FLOW_TINY}
    path = folder / "tiny-flow.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["experiment", "--config", str(path), "--quick", "--out", str(folder / "runs")]) == 0
    log = capsys.readouterr().out
    for stage in ("autoencoder", "pixel_decoder_ii", "pixel_autoencoder"):
        assert f"  {stage}: skipped (outputs valid)" in log  # shared with the latent-space arms
    record = json.loads((folder / "runs" / "tiny-flow" / "results.json").read_text())
    page = (folder / "runs" / "tiny-flow" / "report.html").read_text()
    reference = gaussian_bits(0.3)
    for arm in record["arms"].values():
        assert arm["generator_kind"] == "flow" and arm["gaussian_bits_per_dim"] == pytest.approx(reference)
        loss = arm["generator_loss"]
        assert loss["last"] < loss["first"], arm["name"]
        bits = [p["bits_per_dim"] for p in arm["curve"]]
        assert bits[-1] < reference, (arm["name"], bits)  # learned beyond a Gaussian
        steps = [p["step"] for p in arm["curve"]]
        scored = sorted(p.name for p in (folder / "runs" / "tiny-flow" / arm["name"] / "eval").glob("*.json"))
        if arm["replicate_of"]:  # replicate_steps: final -> trained to and scored at the last step only
            assert steps == [60] and scored == ["step-00000060.json"], (arm["name"], scored)
        else:
            assert steps == [30, 60] and len(scored) == 2 and bits[-1] < bits[0], (arm["name"], bits)
        for p in arm["curve"]:
            assert f"<td>{bits_text(p['bits_per_dim'])}</td>" in page
        assert isinstance(load_generator(folder / "runs" / "tiny-flow" / arm["name"] / "generator"), FlowGenerator)
    verdict = record["verdicts"][0]["fid"]
    assert verdict["verdict"] in ("agrees", "disagrees", "inside the noise") and verdict["decided_by"]
    assert "Likelihood" in page
