"""Arithmetic checked against first principles: hand-computed values and the identities the
formula must satisfy, not outputs saved from an earlier run (which would pin a bug present then).

EMA (Polyak averaging and its warm-up), 2-D RoPE (pair rotations by row / column angle: identity
at 0, norm-preserving, relative in q.k), DiT's timestep embedding and adaLN modulation.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fae.generation.model import modulate
from fae.nn.embeddings import timestep_embedding
from fae.nn.rope import Rope2D, apply_rope, rope_2d_angles
from fae.training.ema import EMA


# ---- EMA --------------------------------------------------------------------------------------------

def _one_weight(value: float) -> nn.Linear:
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(value)
    return layer


def test_one_ema_update_is_decay_times_ema_plus_one_minus_decay_times_param():
    layer = _one_weight(2.0)
    ema = EMA(layer, decay=0.9, warmup=False)  # shadow starts at the parameter: 2
    with torch.no_grad():
        layer.weight.fill_(12.0)
    ema.update()
    assert ema.shadow["weight"].item() == pytest.approx(0.9 * 2.0 + 0.1 * 12.0)  # 3.0, not 11.0
    ema.update()
    assert ema.shadow["weight"].item() == pytest.approx(0.9 * 3.0 + 0.1 * 12.0)  # 3.9


def test_k_updates_towards_a_constant_parameter_follow_the_closed_form():
    # ema_k = p + (ema_0 - p) * decay^k
    layer = _one_weight(0.0)
    ema = EMA(layer, decay=0.8, warmup=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    for _ in range(5):
        ema.update()
    assert ema.shadow["weight"].item() == pytest.approx(1.0 - 0.8 ** 5)
    assert layer.weight.item() == 1.0  # the live weights are not touched by the update


def test_warmup_decay_is_one_plus_n_over_ten_plus_n_capped_at_decay():
    layer = _one_weight(0.0)
    ema = EMA(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    # n = 0: min(0.5, 1/10) = 0.1 -> 0.9; n = 1: min(0.5, 2/11) -> 0.9 * 2/11 + 9/11; n >= 8: 0.5
    assert ema.current_decay() == 0.1
    ema.update()
    assert ema.shadow["weight"].item() == pytest.approx(0.9)
    ema.update()
    assert ema.shadow["weight"].item() == pytest.approx(0.9 * 2 / 11 + 9 / 11)
    ema.updates = 8
    assert ema.current_decay() == 0.5  # 9/18 reaches the cap


def test_swapped_in_shows_the_shadow_and_restores_the_live_weights():
    layer = _one_weight(2.0)
    ema = EMA(layer, decay=0.9, warmup=False)
    with torch.no_grad():
        layer.weight.fill_(12.0)
    ema.update()
    with ema.swapped_in() as module:
        assert module.weight.item() == pytest.approx(3.0)
    assert layer.weight.item() == 12.0 and ema.shadow["weight"].item() == pytest.approx(3.0)


# ---- 2-D RoPE -------------------------------------------------------------------------------------

HEAD_DIM = 8  # 4 pairs: pairs 0-1 rotate by the row, pairs 2-3 by the column


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """apply_rope on x [B, H, N, d] with angles [N, d/2]."""
    return apply_rope(x, angles.cos(), angles.sin())


def test_one_pair_rotates_by_the_hand_written_2x2_matrix():
    angle = torch.tensor([[0.7]])  # [N=1, one pair]
    x = torch.tensor([3.0, -2.0]).reshape(1, 1, 1, 2)
    c, s = math.cos(0.7), math.sin(0.7)
    expected = torch.tensor([[c, -s], [s, c]]) @ torch.tensor([3.0, -2.0])  # counter-clockwise
    torch.testing.assert_close(_rotate(x, angle).reshape(2), expected, rtol=0, atol=1e-6)


def test_angles_are_row_then_column_times_the_roformer_frequencies():
    theta = 100.0
    angles = rope_2d_angles((2, 3), HEAD_DIM, theta)  # [6, 4]
    freqs = [1.0, theta ** -0.5]  # theta^(-2i/(d/2)), i = 0, 1: each axis gets d/2 channels
    for n in range(6):
        row, col = divmod(n, 3)  # row-major grid
        expected = [row * freqs[0], row * freqs[1], col * freqs[0], col * freqs[1]]
        torch.testing.assert_close(angles[n], torch.tensor(expected), rtol=1e-6, atol=0)


def test_position_zero_is_the_identity_and_every_pair_keeps_its_norm():
    rope = Rope2D((3, 3), HEAD_DIM)
    x = torch.randn(2, 2, 9, HEAD_DIM, generator=torch.Generator().manual_seed(0))
    out = rope(x)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0], rtol=0, atol=0)  # token (0, 0)
    pair_norms = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair_norms(out), pair_norms(x), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out[:, :, 1:], x[:, :, 1:])  # every other token moved


def test_the_row_half_follows_the_row_index_and_the_column_half_the_column_index():
    rope = Rope2D((3, 3), HEAD_DIM)
    x = torch.randn(1, 1, 1, HEAD_DIM, generator=torch.Generator().manual_seed(1)).expand(1, 1, 9, HEAD_DIM)
    out = rope(x)[0, 0]  # [9, d]: the same vector at every grid position
    first, second = out[:, :HEAD_DIM // 2], out[:, HEAD_DIM // 2:]
    # tokens of one row agree on the first half; tokens of one column on the second half
    torch.testing.assert_close(first[3:6], first[3].expand(3, -1), rtol=0, atol=0)
    torch.testing.assert_close(second[[1, 4, 7]], second[1].expand(3, -1), rtol=0, atol=0)
    assert not torch.allclose(first[0], first[3]) and not torch.allclose(second[0], second[1])


def test_query_key_products_depend_only_on_the_relative_position():
    # q at (r1, c1), k at (r2, c2): <R q, R k> is unchanged by moving both by the same (dr, dc)
    grid = (5, 5)
    angles = rope_2d_angles(grid, HEAD_DIM)
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(HEAD_DIM, generator=g, dtype=torch.float64), torch.randn(HEAD_DIM, generator=g, dtype=torch.float64)

    def product(q_pos: tuple[int, int], k_pos: tuple[int, int]) -> float:
        at = lambda v, pos: _rotate(v.reshape(1, 1, 1, -1), angles[[pos[0] * grid[1] + pos[1]]].double())  # noqa: E731
        return float((at(q, q_pos) * at(k, k_pos)).sum())

    base = product((0, 1), (2, 0))
    assert product((2, 3), (4, 2)) == pytest.approx(base, abs=1e-12)
    assert product((1, 1), (3, 0)) == pytest.approx(base, abs=1e-12)
    assert product((0, 1), (2, 1)) != pytest.approx(base, abs=1e-3)  # another offset, another product


# ---- timestep embedding and adaLN -----------------------------------------------------------------

def test_timestep_embedding_is_cos_then_sin_of_t_times_geometric_frequencies():
    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 6, max_period=100.0)  # frequencies 100^(-i/3), i = 0, 1, 2
    freqs = [100.0 ** (-i / 3) for i in range(3)]
    expected = [[math.cos(3.0 * f) for f in freqs] + [math.sin(3.0 * f) for f in freqs]]
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), rtol=0, atol=0)
    torch.testing.assert_close(emb[1], torch.tensor(expected[0]), rtol=0, atol=1e-6)


def test_adaln_modulation_is_x_times_one_plus_scale_plus_shift():
    x = torch.tensor([[[1.0, -2.0], [0.5, 4.0]]])  # [B=1, N=2, D=2]
    shift, scale = torch.tensor([[[10.0, 20.0]]]), torch.tensor([[[0.5, -1.0]]])  # [B, 1, D]
    expected = torch.tensor([[[1.5 + 10.0, 0.0 + 20.0], [0.75 + 10.0, 0.0 + 20.0]]])
    torch.testing.assert_close(modulate(x, shift, scale), expected, rtol=0, atol=0)
    # zero scale and shift (adaLN-Zero at initialisation) is the identity
    torch.testing.assert_close(modulate(x, torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)), x, rtol=0, atol=0)
