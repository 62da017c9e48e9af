"""Fake quantization: exact formats, block structure, straight-through grads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import quantization as q

jax.config.update('jax_numpy_rank_promotion', 'raise')


def test_e2m1_rounding_table_with_ties_to_even():
  x = jnp.array([0.0, 0.2, 0.25, 0.3, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.1,
                 6.0, 7.0, 100.0, -0.75, -5.0])
  want = [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0,
          6.0, 6.0, 6.0, -1.0, -4.0]
  np.testing.assert_array_equal(q.round_to_e2m1(x), want)


def test_int4_block_is_an_integer_grid_of_its_absmax():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 16))
  y = q.quantize(x, 'int4')
  scale = np.max(np.abs(np.asarray(x)), axis=-1, keepdims=True) / 7
  k = np.asarray(y) / scale
  np.testing.assert_allclose(k, np.round(k), atol=1e-5)
  assert np.all(np.abs(np.round(k)) <= 7)
  # The largest entry survives exactly (up to one rounding of absmax / 7 * 7).
  np.testing.assert_allclose(np.max(np.abs(y), -1), np.max(np.abs(x), -1),
                             rtol=1e-6)
  # Round-to-nearest: error at most half a step.
  assert np.all(np.abs(np.asarray(y - x)) <= scale / 2 + 1e-6)


def test_fp4_values_are_e2m1_times_an_e4m3_block_scale():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 48)) * 3.0
  y = np.asarray(q.quantize(x, 'fp4'))
  xb = np.asarray(x).reshape(2, 3, 16)
  yb = y.reshape(2, 3, 16)
  tensor_scale = np.abs(xb).max() / (6 * 448)
  for blk_x, blk_y in zip(xb.reshape(-1, 16), yb.reshape(-1, 16)):
    block_scale = float(q.round_to_e4m3(
        jnp.float32(np.abs(blk_x).max() / 6 / tensor_scale)))
    # The block scale is representable in E4M3.
    assert float(q.round_to_e4m3(jnp.float32(block_scale))) == block_scale
    codes = blk_y / (block_scale * tensor_scale)
    grid = np.array(q.E2M1_GRID)
    assert np.all(np.min(np.abs(np.abs(codes)[:, None] - grid[None, :]), -1)
                  < 1e-4)


def test_blocks_are_independent_and_padding_is_harmless():
  x = jnp.concatenate([jnp.ones(16), 100 * jnp.ones(5)])  # 21: padded to 32.
  for fmt in q.FORMATS:
    y = q.quantize(x, fmt)
    assert y.shape == (21,)
    # A huge second block does not coarsen the first one; fp4's only error on
    # a constant block is the E4M3 rounding of its scale (3 mantissa bits).
    rtol = 1e-6 if fmt == 'int4' else 2.0 ** -4
    np.testing.assert_allclose(y[:16], 1.0, rtol=rtol)
    np.testing.assert_allclose(y[16:], 100.0, rtol=rtol)


def test_axis_picks_the_blocked_dimension():
  x = jax.random.normal(jax.random.PRNGKey(2), (16, 32))
  np.testing.assert_array_equal(q.quantize(x, 'fp4', axis=0),
                                q.quantize(x.T, 'fp4', axis=-1).T)


def test_straight_through_gradient_is_the_identity():
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 16))
  c = jax.random.normal(jax.random.PRNGKey(4), (4, 16))
  for fmt in q.FORMATS:
    g = jax.grad(lambda x: jnp.sum(q.fake_quant(x, fmt) * c))(x)
    np.testing.assert_array_equal(g, c)
    assert not np.allclose(q.fake_quant(x, fmt), x)


def test_quantized_dense_multiplies_quantized_operands():
  x = jax.random.normal(jax.random.PRNGKey(5), (3, 32))
  dense = nn.Dense(8, dot_general=q.quantized_dot_general('int4'))
  params = dense.init(jax.random.PRNGKey(6), x)
  w = params['params']['kernel']
  want = q.quantize(x, 'int4', -1) @ q.quantize(w, 'int4', 0)
  np.testing.assert_allclose(dense.apply(params, x), want, rtol=1e-6)
  assert q.quantized_dot_general(None) is None  # Default path untouched.


def test_unknown_format_is_rejected():
  with pytest.raises(ValueError, match='model.quantization'):
    q.quantize(jnp.ones(16), 'int3')
