"""Models from config: defaults unchanged, every knob trains, bad input rejected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import wsd
from dynamics import config_lib, models, parametrization, runs
from dynamics.optim import build_optimizer

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _config(**overrides):
  c = wsd.get_config('smoke')
  c.model.d_model, c.model.num_heads = 16, 2
  c.data.seq_len, c.data.batch_size = 8, 4
  c.update_from_flattened_dict(overrides)
  return c


def _train(c, steps=4):
  """``steps`` updates on one fixed batch; the metrics of each."""
  config_lib.validate(c)
  parts = runs.build(c)
  parts = parts._replace(tx=build_optimizer(parametrization.optimizer_config(c),
                                            parts.schedule))
  run = runs.Run(c, parts=parts)
  state = run.init_state()
  step = run.train_step
  out = []
  for _ in range(steps):
    state, metrics = step(state, jax.tree.map(jnp.asarray,
                                              parts.dataset.train_batch(0)))
    out.append(jax.device_get(metrics))
  return out


# Each value of every knob appears at least once; combined to keep compiles few
# (the LLaMA options with the norm placements, qk-norm, parametrizations,
# quantization and bf16).
KNOBS = [
    {'model.norm': 'rmsnorm', 'model.norm_position': 'post',
     'model.init': 'he', 'model.quantization': 'int4', 'model.mlp': 'swiglu',
     'model.mlp_hidden': 24, 'model.remat': 'dots', 'model.dtype': 'bfloat16'},
    {'model.norm': 'dyt', 'model.norm_position': 'peri', 'model.qk_norm': True,
     'model.init': 'orthogonal', 'model.parametrization': 'mup',
     'model.base_width': 8, 'model.position': 'rope', 'model.remat': 'full'},
    {'model.norm': 'none', 'model.norm_position': 'mix', 'model.mix_ln_split': 1,
     'model.init': 'fixup', 'model.quantization': 'fp4',
     'model.tie_embeddings': False, 'model.use_bias': False,
     'optimizer.grad_accum_steps': 2},
    {'model.norm_position': 'deepnorm', 'model.layernorm_scaling': True,
     'model.init': 'zero', 'model.init_scale': 0.5,
     'model.parametrization': 'ntk', 'model.softmax': 'stablemax',
     'loss.z_loss': 1e-4, 'optimizer.orthograd': True, 'log_per_layer': True},
]


@pytest.mark.parametrize('overrides', KNOBS, ids=lambda o: o['model.norm']
                         if 'model.norm' in o else 'deepnorm')
def test_every_knob_trains_the_smoke_model_without_nan(overrides):
  metrics = _train(_config(**overrides))
  for m in metrics:
    bad = [k for k, v in m.items() if not np.all(np.isfinite(v))]
    assert not bad, bad
  assert metrics[-1]['loss'] < metrics[0]['loss']  # It learns the batch.
  if overrides.get('log_per_layer'):
    for key in ('layers/attn_logit_max/block_0', 'layers/resid_var/block_1',
                'output_log_z', 'layers/effective_lr/block_0/mlp/fc_in/kernel',
                'layers/angular_update/head/kernel'.replace('head', 'embed')
                .replace('kernel', 'embedding')):
      assert key in metrics[-1], key


def test_default_knobs_leave_the_model_unchanged():
  c = _config()
  model = models.build_model(c.model, runs.build(c).dataset.info)
  ref = models.Transformer(vocab_size=32, d_model=16, num_layers=2,
                           num_heads=2, max_len=32)
  tokens = jnp.zeros((1, 8), jnp.int32)
  p = model.init(jax.random.PRNGKey(0), tokens)
  p_ref = ref.init(jax.random.PRNGKey(0), tokens)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), p, p_ref))
  assert model.knobs == models.Knobs() and model.knobs.linear('hidden', 4) == {}


@pytest.mark.parametrize('overrides, field', [
    ({'model.name': 'mlp', 'data.name': 'modular', 'model.qk_norm': True},
     'model.qk_norm'),
    ({'model.parametrization': 'mup'}, 'model.base_width'),
    ({'model.base_width': 64}, 'model.base_width'),
    ({'model.init_scale': 0.0}, 'model.init_scale'),
    ({'model.init_scale': -1.0}, 'model.init_scale'),
    ({'model.name': 'mlp', 'data.name': 'modular', 'model.init': 'fixup'},
     'model.init'),
    ({'model.name': 'mlp', 'data.name': 'modular',
      'model.norm_position': 'peri'}, 'model.norm_position'),
    ({'model.norm_position': 'sandwich'}, 'model.norm_position'),
    ({'model.mix_ln_split': 1}, 'model.mix_ln_split'),
    ({'model.norm': 'none', 'model.layernorm_scaling': True},
     'model.layernorm_scaling'),
    ({'model.quantization': 'int8'}, 'model.quantization'),
    ({'model.softmax': 'sparsemax'}, 'model.softmax'),
    ({'model.position': 'alibi'}, 'model.position'),
    ({'model.position': 'rope', 'model.d_model': 18}, 'model.position'),
    ({'model.mlp': 'geglu'}, 'model.mlp'),
    ({'model.name': 'mlp', 'data.name': 'modular', 'model.mlp': 'swiglu'},
     'model.mlp'),
    ({'model.remat': 'everything'}, 'model.remat'),
    ({'model.vocab_size': 16}, 'model.vocab_size'),
    ({'optimizer.grad_accum_steps': 3}, 'optimizer.grad_accum_steps'),
    ({'optimizer.grad_accum_steps': 0}, 'optimizer.grad_accum_steps'),
    ({'throughput.peak_flops': 0.0}, 'throughput.peak_flops'),
])
def test_bad_knobs_name_the_field(overrides, field):
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}='):
    config_lib.validate(_config(**overrides))
