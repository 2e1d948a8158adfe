"""The training loop in one process: loss falls, accumulation, phases, NaN policy, dry-run, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from fae.cli import main as fae_main
from fae.errors import ConfigError, TrainingError
from fae.training.checkpoint import load_file
from fae.training.stages.registry import load_stage
from fae.training.engine import Trainer, train
from fae.training.metrics_log import read_metrics
from training_helpers import single_thread, toy_stage


def test_loss_falls_and_run_folder_is_complete(tmp_path):
    with single_thread():
        result = train(toy_stage(tmp_path / "run", "train.steps=40", "train.log_every=5",
                                 "train.ckpt_every=20"))
    records = read_metrics(tmp_path / "run", "train")
    losses = [r["main/loss"] for r in records]
    assert losses[-1] < 0.5 * losses[0], losses
    assert {"lr/main", "main/grad_norm", "images_per_s", "nan_skips"} <= set(records[-1])
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    assert result["step"] == 40 and result["resumed_from"] is None
    evals = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evals["step"] == 40 and evals["mse"] == pytest.approx(result["eval"]["mse"])
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step-00000020.pt", "step-00000040.pt"]


def test_export_holds_ema_weights(tmp_path):
    from safetensors.torch import load_file as load_safetensors

    with single_thread():
        train(toy_stage(tmp_path / "run", "train.steps=4", "train.ema_decay=0.5"))
    state = load_file(tmp_path / "run" / "checkpoints" / "step-00000004.pt")
    exported = load_safetensors(tmp_path / "run" / "export" / "model.safetensors")
    ema = state["ema"]["net"]["shadow"]
    assert ema and all(torch.equal(exported[f"net.{k}"], v) for k, v in ema.items())
    live = state["models"]["net"]
    assert any(not torch.equal(live[k], ema[k]) for k in ema)  # EMA really differs from live


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    with single_thread():
        a = Trainer(toy_stage(tmp_path / "a", "train.steps=3", "train.grad_accum=1"))
        a.run()
        b = Trainer(toy_stage(tmp_path / "b", "train.steps=3", "train.grad_accum=4"))
        b.run()
    for (name, pa), pb in zip(a.modules["net"].named_parameters(), b.modules["net"].parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)


def test_each_phase_updates_only_its_own_parameters(tmp_path):
    stage = toy_stage(tmp_path / "gan", "two_phase=true", "train.steps=3", "generator_start_step=2")
    with single_thread():
        trainer = Trainer(stage)
        before = {n: {k: v.clone() for k, v in m.state_dict().items()}
                  for n, m in trainer.modules.items()}
        critic, generator = trainer.runners
        batch = [next(iter(trainer._loader()))]
        trainer._run_phase(generator, batch)  # generator loss backprops *through* the critic
        assert all(p.grad is not None for p in trainer.modules["generator"].parameters())
        assert all(p.grad is None for p in trainer.modules["critic"].parameters())
        generator.optimizer.zero_grad(set_to_none=True)
        trainer._run_phase(critic, batch)
        assert all(p.grad is None for p in trainer.modules["generator"].parameters())
        assert all(p.grad is not None for p in trainer.modules["critic"].parameters())
        for runner in trainer.runners:
            runner.optimizer.zero_grad(set_to_none=True)
        trainer.save_checkpoint()  # step 0: the state before any update
        trainer.run()
    after = load_file(tmp_path / "gan" / "checkpoints" / "step-00000002.pt")["models"]
    # Steps 0 and 1 ran only the critic phase: the generator is untouched, the critic moved.
    assert all(torch.equal(before["generator"][k], v) for k, v in after["generator"].items())
    assert not all(torch.equal(before["critic"][k], v) for k, v in after["critic"].items())
    final = {n: m.state_dict() for n, m in trainer.modules.items()}
    assert not all(torch.equal(after["generator"][k], v) for k, v in final["generator"].items())
    records = read_metrics(tmp_path / "gan", "train")
    assert "generator/loss" not in records[1] and "generator/loss" in records[2]


def test_nan_skip_counts_the_step_and_leaves_weights_alone(tmp_path):
    stage = toy_stage(tmp_path / "run", "nan_at_step=2", "train.nan_policy=skip",
                      "train.ckpt_every=1", "train.keep_last=10", "train.steps=4")
    with single_thread():
        result = train(stage)
    assert result["nan_skips"] == 1
    ckpt = tmp_path / "run" / "checkpoints"
    at2, at3 = load_file(ckpt / "step-00000002.pt"), load_file(ckpt / "step-00000003.pt")
    assert all(torch.equal(at2["models"]["net"][k], v) for k, v in at3["models"]["net"].items())
    assert all(torch.equal(at2["ema"]["net"]["shadow"][k], v)
               for k, v in at3["ema"]["net"]["shadow"].items())
    at4 = load_file(ckpt / "step-00000004.pt")
    assert not all(torch.equal(at3["models"]["net"][k], v) for k, v in at4["models"]["net"].items())
    assert [r["nan_skips"] for r in read_metrics(tmp_path / "run", "train")] == [0, 0, 1, 1]


def test_nan_stop_names_the_step(tmp_path):
    stage = toy_stage(tmp_path / "run", "nan_at_step=3", "train.nan_policy=stop")
    with single_thread(), pytest.raises(TrainingError, match=r"non-finite loss at step 3"):
        train(stage)


def test_too_many_nan_skips_stop(tmp_path):
    stage = toy_stage(tmp_path / "run", "nan_at_step=1", "train.nan_policy=skip",
                      "train.max_nan_skips=0")
    with single_thread(), pytest.raises(TrainingError, match="max_nan_skips"):
        train(stage)


@pytest.mark.parametrize("override, key", [("train.bogus=1", "train.bogus"),
                                           ("train.steps=many", "train.steps"),
                                           ("train.optim.lr=fast", "train.optim.lr"),
                                           ("train.nan_policy=ignore", "train.nan_policy"),
                                           ("widht=3", "widht")])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_stage("toy", None, [override])


def test_cli_reports_bad_key_before_any_work(tmp_path, capsys):
    code = fae_main(["train", "toy", f"train.run_dir={tmp_path / 'run'}", "train.optim.betas=0.9"])
    assert code == 2
    assert "train.optim.betas" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_batch_must_split_over_micro_batches(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size"):
        Trainer(toy_stage(tmp_path / "run", "train.batch_size=6", "train.grad_accum=4"))


def test_dry_run_counts_parameters_and_touches_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = fae_main(["train", "toy", "--dry-run", f"train.run_dir={run_dir}", "hidden=32"])
    out = capsys.readouterr().out
    assert code == 0
    # MLP 8 -> 32 -> 1: (8*32 + 32) + (32*1 + 1) = 321 parameters.
    assert "net: 321 parameters" in out and "total: 321 parameters" in out
    assert str(run_dir.resolve()) in out and "would start from step 0" in out
    assert "task: MLP regression" in out
    assert not run_dir.exists()


def test_cli_trains_and_prints_run_folder_and_export(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with single_thread():
        code = fae_main(["train", "toy", f"train.run_dir={run_dir}", "train.steps=2",
                         "train.batch_size=4", "train.progress=false"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"run folder: {run_dir}" in out and f"export: {run_dir / 'export'}" in out


def test_data_workers_do_not_change_results(tmp_path):
    """Items are fetched under RNGs seeded by stream position, so random flips are the same in
    worker processes as in the main process."""
    with single_thread():
        a = Trainer(toy_stage(tmp_path / "a", "train.steps=3", "train.num_workers=0"))
        a.run()
        b = Trainer(toy_stage(tmp_path / "b", "train.steps=3", "train.num_workers=2"))
        b.run()
    for pa, pb in zip(a.modules["net"].parameters(), b.modules["net"].parameters()):
        assert torch.equal(pa, pb)


def test_bf16_autocast_trains(tmp_path):
    with single_thread():
        trainer = Trainer(toy_stage(tmp_path / "run", "train.precision=bf16", "train.steps=30",
                                    "train.ckpt_every=0"))
        trainer.run()
    assert trainer.autocast_dtype == torch.bfloat16
    losses = [r["main/loss"] for r in read_metrics(tmp_path / "run", "train")]
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == torch.float32 for p in trainer.modules["net"].parameters())  # fp32 master


def test_cosine_schedule_with_warmup():
    from fae.training.config import OptimConfig
    from fae.training.schedule import lr_at

    optim = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=10, min_lr=1e-5)
    total = 111  # steps 10..110 decay: step 60 is half way, step 110 the last
    assert lr_at(0, optim, total) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert lr_at(9, optim, total) == pytest.approx(1e-3)
    assert lr_at(10, optim, total) == pytest.approx(1e-3)
    assert lr_at(60, optim, total) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(110, optim, total) == pytest.approx(1e-5)
    constant = OptimConfig(lr=1e-4, warmup_steps=4)
    assert [lr_at(s, constant, 100) for s in (0, 3, 50)] == pytest.approx([2.5e-5, 1e-4, 1e-4])
