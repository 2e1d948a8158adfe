"""Property tests (hypothesis) of the two readers users feed by hand: the config parser (YAML files
and ``key=value`` overrides) and the ADM ``.npz`` reader. Whatever the input, they either return
a checked value or raise the project's own error, never a raw exception."""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fae.config import from_dict, load_config, parse_override, read_yaml, save_yaml, to_dict
from fae.errors import ConfigError, DataError
from fae.evaluation.stats import NpzImages, read_sample_batch, read_stats, write_sample_batch

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Inner:
    rate: float = 0.1
    names: list[str] = field(default_factory=list)


@dataclass
class Schema:
    steps: int = 1
    flag: bool = False
    mode: str = "a"
    size: int | None = None
    inner: Inner = field(default_factory=Inner)


# ------------------------------------------------------------------------------------- config
@SETTINGS
@given(st.text(max_size=40))
def test_an_override_parses_or_is_a_config_error(text):
    try:
        path, _ = parse_override(text)
    except ConfigError:
        return
    assert path == text.split("=", 1)[0].split(".")


@SETTINGS
@given(st.binary(max_size=200))
def test_any_config_file_reads_as_a_mapping_or_is_a_config_error(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    try:
        assert isinstance(read_yaml(path), dict)
    except ConfigError as e:
        assert str(path) in str(e)


KEYS = st.sampled_from(["steps", "flag", "mode", "size", "inner", "inner.rate", "inner.names",
                        "inner.other", "other", "steps.x"])
VALUES = st.sampled_from(["1", "-3", "2.5", "1e-4", "true", "null", "[1, 2]", "[a, b]", "{a: 1}",
                          "abc", "", "[1,", "'q"])


@SETTINGS
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_overrides_give_a_typed_config_or_a_config_error_naming_the_key(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(Schema, None, overrides)
    except ConfigError as e:
        assert any(k.split(".")[0] in str(e) for k, _ in pairs), str(e)
        return
    assert isinstance(cfg.steps, int) and not isinstance(cfg.steps, bool)
    assert isinstance(cfg.flag, bool) and isinstance(cfg.mode, str)
    assert isinstance(cfg.inner.rate, float) and all(isinstance(n, str) for n in cfg.inner.names)


CONFIGS = st.builds(Schema, steps=st.integers(-10**6, 10**6), flag=st.booleans(),
                    mode=st.text(max_size=8), size=st.none() | st.integers(0, 99),
                    inner=st.builds(Inner, rate=st.floats(allow_nan=False, allow_infinity=False),
                                    names=st.lists(st.text(max_size=5), max_size=3)))


@SETTINGS
@given(CONFIGS)
def test_a_saved_config_loads_back_equal(tmp_path, cfg):
    path = tmp_path / "cfg.yaml"
    save_yaml(cfg, path)
    assert load_config(Schema, path) == cfg
    assert from_dict(Schema, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg


# ---------------------------------------------------------------------------------- ADM .npz
def _read_all(path: Path) -> None:
    """Every reader on ``path``; each returns a checked value or raises DataError."""
    for reader in (read_sample_batch, read_stats, lambda p: NpzImages(p).close()):
        try:
            reader(path)
        except DataError as e:
            assert str(path) in str(e)


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_are_a_data_error(tmp_path, data):
    path = tmp_path / "x.npz"
    path.write_bytes(data)
    _read_all(path)


ARRAYS = st.builds(lambda shape, dtype: np.zeros(shape, dtype=dtype),
                   st.lists(st.integers(0, 4), max_size=4).map(tuple),
                   st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["arr_0", "arr_1", "labels", "mu", "sigma", "mu_s", "sigma_s",
                                        "count", "pool_features"]), ARRAYS, max_size=5),
       st.booleans())
def test_any_npz_members_read_checked_or_a_data_error(tmp_path, arrays, damaged):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    path = tmp_path / "x.npz"
    path.write_bytes(data[:len(data) // 2] if damaged else data)
    _read_all(path)
    try:
        stats = read_stats(path)
    except DataError:
        return
    d = stats.mu.shape[0]
    assert stats.mu.shape == (d,) and stats.sigma.shape == (d, d)


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 3]),
       st.integers(0, 2**32 - 1))
def test_sample_batches_round_trip_and_read_by_slices(tmp_path, n, h, w, c, seed):
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    labels = np.arange(n) * 7
    path = write_sample_batch(tmp_path / "s.npz", images, labels)
    read, read_labels = read_sample_batch(path)
    assert np.array_equal(read, images) and np.array_equal(read_labels, labels)
    reader = NpzImages(path)
    try:
        for start in range(n):
            expected = torch.from_numpy(images[start:n]).permute(0, 3, 1, 2)
            assert torch.equal(reader.batch(start, n), expected)
    finally:
        reader.close()


def test_a_zip_that_is_not_numpy_is_a_data_error(tmp_path):
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("arr_0.npy", b"not an array")
    with pytest.raises(DataError, match="x.npz"):
        read_sample_batch(path)
