"""Tokens/s and MFU: the FLOP count of a transformer, the meter's intervals."""

import jax
import pytest

from configs import wsd
from dynamics import models, summary, throughput


def _config(**model):
  c = wsd.get_config('smoke')  # d 32, 2 layers, seq 16, batch 8, vocab 32
  for k, v in model.items():
    c.model[k] = v
  return c


def _params(c):
  m = models.Transformer(32, c.model.d_model, c.model.num_layers,
                         c.model.num_heads, max_len=c.model.max_len,
                         tie_embeddings=c.model.tie_embeddings)
  return jax.eval_shape(m.init, jax.random.PRNGKey(0),
                        jax.numpy.zeros((1, 16), jax.numpy.int32))['params']


@pytest.mark.parametrize('tied', [True, False])
def test_flops_per_token_is_6n_plus_attention(tied):
  c = _config(tie_embeddings=tied)
  params = _params(c)
  d, layers, seq = 32, 2, 16
  # Per block: qkv (d x 3d + 3d), out (d x d + d), MLP (d x 4d + 4d, 4d x d
  # + d), two LayerNorms (2 x 2d); final LayerNorm 2d; the output head d x V
  # (+ V bias when untied); not the embedding tables.
  block = 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d + 4 * d
  n = layers * block + 2 * d + 32 * d + (0 if tied else 32)
  assert throughput.matmul_params(params, tied) == n
  assert throughput.flops_per_token(params, c) == 6 * n + 12 * layers * seq * d
  c.optimizer.sam.rho = 0.05  # Two forward-backward passes.
  assert throughput.flops_per_token(params, c) == 2 * (6 * n + 12 * layers
                                                       * seq * d)


def test_meter_times_the_steps_between_logs_after_the_first_two():
  c = _config()
  c.log_every, c.num_steps, c.throughput.peak_flops = 2, 7, 1e9
  params = _params(c)
  meter = throughput.Meter(c, params, device_kind='cpu', num_devices=2)
  flops = throughput.flops_per_token(params, c)
  times = {1: 100.0, 2: 150.0, 3: 151.0, 4: 152.0, 5: 153.5, 6: 155.0,
           7: 157.0}
  rates = {}
  for step, t in times.items():
    meter.mark(step, now=t)
    rates[step] = meter.rates(step)
  tokens = 8 * 16
  # Steps 1 (compiles) and 2 (first run) are not timed: step 2 opens.
  assert rates[1] == rates[2] == rates[3] == {}
  assert rates[4]['tokens_per_s'] == pytest.approx(2 * tokens / 2.0)
  assert rates[6]['tokens_per_s'] == pytest.approx(2 * tokens / 3.0)
  assert rates[7]['tokens_per_s'] == pytest.approx(tokens / 2.0)  # The last.
  assert rates[6]['mfu'] == pytest.approx(rates[6]['tokens_per_s'] * flops
                                          / 2e9)
  no_peak = _config()
  no_peak.log_every = 2
  plain = throughput.Meter(no_peak, params, device_kind='cpu')
  for step in (1, 2, 4):
    plain.mark(step, now=float(step))
  assert plain.rates(4) == {'tokens_per_s': tokens}  # No MFU without a peak.
  assert throughput.peak_flops('TPU v5 lite') == 197e12
  assert throughput.peak_flops('cpu') is None


def test_summary_reports_the_median_rate_and_how_to_get_mfu():
  records = [{'step': 1, 'tokens_per_s': 10.0}, {'step': 2, 'tokens_per_s': 30.0},
             {'step': 3, 'tokens_per_s': 20.0}]
  line = summary._throughput(records)
  assert line.startswith('  throughput   20 tokens/s (median), MFU n/a')
  assert '--config.throughput.peak_flops' in line
  records[1]['mfu'] = 0.25
  assert summary._throughput(records).endswith('20 tokens/s (median), MFU 25.00%')
  assert summary._throughput([{'step': 1, 'loss': 1.0}]) == ''
