"""Every ``Exportable`` in ``fae`` round-trips: ``save_pretrained`` writes ``config.json`` +
``model.safetensors`` + the model card ``README.md`` and nothing else, and ``from_pretrained``
rebuilds the same config and computes bit-identical outputs on a fixed input, in eval mode.

The classes are found by walking the ``fae`` package, so a new export format is covered the day
it is written; it fails here until ``tests/tiny.py`` gives it a tiny builder (``TINY_EXPORTS``)
and this file an output to compare (``OUTPUTS``).
"""
from __future__ import annotations

import importlib
import json
import pkgutil
from typing import Callable

import pytest
import torch

import fae
from fae.autoencoder import FAE
from fae.autoencoder.pixel_autoencoder import PixelAutoencoder
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.export import CONFIG_FILE, WEIGHTS_FILE, Exportable
from fae.model_card import CARD_FILE
from fae.generation import Generator, TextCondition, TextToImageGenerator
from fae.generation.flow_generator import FlowGenerator
from tiny import TINY_EXPORTS, TINY_MMDIT, perturbed

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _fixed(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _fae_outputs(fae: FAE) -> dict[str, torch.Tensor]:
    z = fae.encode(torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                                 dtype=torch.uint8))  # [2, 4, 4, 4]
    return {"z": z, "features": fae.decode_features(z), "images": fae.decode(z)}


def _pixel_autoencoder_outputs(vae: PixelAutoencoder) -> dict[str, torch.Tensor]:
    z = vae.encode(torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)))  # [2, 4, 4, 4]
    return {"z": z, "images": vae.decode(z)}


def _generator_outputs(gen: Generator) -> dict[str, torch.Tensor]:
    velocity = gen.model(_fixed(2, 4, 4, 4), torch.tensor([0.3, 0.8]), torch.tensor([0, 2]))
    return {"velocity": velocity, "sample": gen.sample(range(2), torch.tensor([1, 2]), seed=0)}


def _t2i_outputs(gen: TextToImageGenerator) -> dict[str, torch.Tensor]:
    text = TextCondition(_fixed(2, 3, TINY_MMDIT["text_dim"]), torch.tensor([[1, 1, 0], [1, 1, 1]]).bool(),
                         _fixed(2, TINY_MMDIT["pooled_dim"], seed=1))
    return {"velocity": gen.model(_fixed(2, 4, 4, 4), torch.tensor([0.3, 0.8]), text),
            "latent_mean": gen.latent_mean, "latent_std": gen.latent_std}


def _flow_outputs(gen: FlowGenerator) -> dict[str, torch.Tensor]:
    x, labels = gen.normalize(_fixed(2, 4, 4, 4)), torch.tensor([0, 2])
    z, logdet = gen.model(x, labels)
    return {"z": z, "logdet": logdet, "log_prob": gen.model.log_prob(x, labels)}


# Exportable class -> what its export must reproduce bit for bit.
OUTPUTS: dict[type[Exportable], Callable[..., dict[str, torch.Tensor]]] = {
    FAE: _fae_outputs,
    PixelDecoder: lambda decoder: {"images": decoder(_fixed(2, 16, 64))},
    PixelAutoencoder: _pixel_autoencoder_outputs,
    Generator: _generator_outputs,
    TextToImageGenerator: _t2i_outputs,
    FlowGenerator: _flow_outputs,
}


def exportable_classes() -> list[type[Exportable]]:
    """Every class under ``fae`` that declares its own ``export_format`` (abstract bases do not)."""
    for module in pkgutil.walk_packages(fae.__path__, "fae."):
        importlib.import_module(module.name)
    found, todo = [], list(Exportable.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "export_format" in vars(cls) and cls.__module__.startswith("fae."):
            found.append(cls)
    return sorted(set(found), key=lambda c: c.__qualname__)


CLASSES = exportable_classes()


def test_the_walk_finds_the_known_exports():
    assert {FAE, PixelDecoder, PixelAutoencoder, Generator, FlowGenerator, TextToImageGenerator} <= set(CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_every_exportable_round_trips_bit_exactly(cls, tmp_path):
    assert cls in TINY_EXPORTS, f"tests/tiny.py TINY_EXPORTS has no tiny builder for {cls.__qualname__}"
    assert cls in OUTPUTS, f"tests/test_exportables.py OUTPUTS has no output to compare for {cls.__qualname__}"
    model = perturbed(TINY_EXPORTS[cls]()).eval()
    folder = model.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["format"] == cls.export_format and config["format_version"] == cls.export_version

    loaded = cls.from_pretrained(folder)
    assert type(loaded) is cls and not loaded.training
    assert loaded.export_config() == model.export_config()
    before, after = model.state_dict(), loaded.state_dict()
    assert list(before) == list(after)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    with torch.no_grad():
        expected, got = OUTPUTS[cls](model), OUTPUTS[cls](loaded)
    assert list(expected) == list(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{cls.__qualname__}: output '{name}' differs after reload"
