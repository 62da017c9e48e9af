"""Config validation: every bad field fails here, before anything compiles."""

import os
from typing import Any, Iterable

import ml_collections

from dynamics import data as data_lib
from dynamics import losses
from dynamics import models as models_lib
from dynamics import optim as optim_lib
from dynamics import parametrization
from dynamics import schedules as schedules_lib
from dynamics import sharding as sharding_lib


class ConfigError(ValueError):
  """A config field has an unknown name or an invalid value."""


def _check(ok: bool, field: str, value: Any, requirement: str) -> None:
  if not ok:
    raise ConfigError(f'config.{field}={value!r}: {requirement}')


def _one_of(field: str, value: Any, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  _check(value in allowed, field, value, f'must be one of {allowed}')


def validate(config: ml_collections.ConfigDict, device_count: int = 1) -> None:
  """Raises ``ConfigError`` naming the first invalid value.

  Unknown fields never get here: ``configs.base.get_config()`` is locked, so
  ml_collections itself rejects them (and values of the wrong type).

  Args:
    config: the experiment config.
    device_count: devices the global batch is split over.
  """
  c = config
  _check(c.num_steps > 0, 'num_steps', c.num_steps, 'must be > 0')
  for field in ('log_every', 'eval_every', 'eval_batches'):
    _check(c[field] > 0, field, c[field], 'must be > 0')
  _validate_sizes(c)

  m = c.model
  _one_of('model.name', m.name, models_lib.MODELS)
  _one_of('model.norm', m.norm, models_lib.NORMS)
  _one_of('model.dtype', m.dtype, tuple(models_lib.DTYPES))
  _one_of('model.activation', m.activation, ('gelu', 'relu', 'tanh', 'silu'))
  _one_of('model.attention_impl', m.attention_impl, (None, 'xla', 'cudnn'))
  _check(m.init_scale > 0, 'model.init_scale', m.init_scale, 'must be > 0')
  _check(m.output_scale > 0, 'model.output_scale', m.output_scale, 'must be > 0')
  _check(0.0 <= m.dropout < 1.0, 'model.dropout', m.dropout, 'must be in [0, 1)')
  _one_of('model.parametrization', m.parametrization, ('standard', 'ntk', 'mup'))
  if m.parametrization == 'mup':
    _check(m.base_width is not None, 'model.base_width', m.base_width,
           'must be set when model.parametrization=mup')
  if m.name == 'transformer':
    _check(m.d_model % m.num_heads == 0, 'model.num_heads', m.num_heads,
           f'must divide model.d_model={m.d_model}')
    _check(m.norm != 'batchnorm', 'model.norm', m.norm,
           'batchnorm is not supported by the transformer')
  else:
    _check(not m.qk_norm, 'model.qk_norm', m.qk_norm,
           f'applies only to model.name=transformer, not {m.name!r}')
    _check(m.norm_position == 'pre', 'model.norm_position', m.norm_position,
           f'applies only to model.name=transformer, not {m.name!r}')
  _validate_model_knobs(c)
  _validate_llm(c, device_count)

  d = c.data
  _one_of('data.name', d.name, data_lib.DATASETS)
  _check(d.batch_size > 0, 'data.batch_size', d.batch_size, 'must be > 0')
  _check_mesh(c, device_count)
  language = d.name in data_lib.LANGUAGE_DATASETS
  if m.name == 'transformer':
    _check(language, 'data.name', d.name,
           'model.name=transformer needs language data (markov | bytes | '
           'tokens)')
    if m.position == 'learned':
      _check(d.seq_len <= m.max_len, 'data.seq_len', d.seq_len,
             f'must be <= model.max_len={m.max_len}')
  else:
    _check(not language, 'data.name', d.name,
           f'model.name={m.name} needs non-language data '
           '(teacher_student | modular | digits)')
  if m.name in ('cnn', 'resnet'):
    _check(d.name in ('digits', 'tfds'), 'data.name', d.name,
           f'model.name={m.name} needs image data (digits)')
  if d.name == 'markov':
    _check(d.temperature > 0, 'data.temperature', d.temperature, 'must be > 0')
    _check(d.vocab_size >= 2, 'data.vocab_size', d.vocab_size, 'must be >= 2')
  if d.name == 'modular':
    _one_of('data.operation', d.operation, data_lib.MODULAR_OPS)
  if d.name == 'digits' and d.num_eval is not None:
    _check(0 < d.num_eval < 1797, 'data.num_eval', d.num_eval,
           'must be in (0, 1797): the digits set has 1,797 images')
    _check(0 < d.train_fraction < 1, 'data.train_fraction', d.train_fraction,
           'must be in (0, 1)')

  _one_of('loss.name', c.loss.name, ('auto', 'cross_entropy', 'mse'))
  _check(c.loss.z_loss >= 0, 'loss.z_loss', c.loss.z_loss, 'must be >= 0')

  o = c.optimizer
  _one_of('optimizer.name', o.name, optim_lib.OPTIMIZERS)
  _check(o.learning_rate > 0, 'optimizer.learning_rate', o.learning_rate,
         'must be > 0')
  for field in ('b1', 'b2', 'momentum', 'gamma1', 'gamma2', 'theta'):
    _check(0.0 <= o[field] < 1.0, f'optimizer.{field}', o[field],
           'must be in [0, 1)')
  _check(o.eps >= 0, 'optimizer.eps', o.eps, 'must be >= 0')
  _check(o.weight_decay >= 0, 'optimizer.weight_decay', o.weight_decay,
         'must be >= 0')
  _one_of('optimizer.weight_decay_mask', o.weight_decay_mask,
          optim_lib.WEIGHT_DECAY_MASKS)
  _check(o.clip_norm is None or o.clip_norm > 0, 'optimizer.clip_norm',
         o.clip_norm, 'must be > 0 or None')
  _check(o.reset_interval >= 1, 'optimizer.reset_interval', o.reset_interval,
         'must be >= 1')
  _check(o.delta >= 0, 'optimizer.delta', o.delta, 'must be >= 0')
  s = o.sam
  _check(s.rho is None or s.rho >= 0, 'optimizer.sam.rho', s.rho,
         'must be >= 0 or None')
  _one_of('optimizer.sam.mask', s.mask, ('all', 'norm'))
  _check(s.eta >= 0, 'optimizer.sam.eta', s.eta, 'must be >= 0')
  _check(s.num_microbatches >= 1, 'optimizer.sam.num_microbatches',
         s.num_microbatches, 'must be >= 1')
  _check(d.batch_size % s.num_microbatches == 0, 'optimizer.sam.num_microbatches',
         s.num_microbatches, f'must divide data.batch_size={d.batch_size}')

  sc = c.schedule
  _one_of('schedule.name', sc.name, schedules_lib.SCHEDULES)
  _one_of('schedule.decay_shape', sc.decay_shape, schedules_lib.DECAY_SHAPES)
  _check(0.0 <= sc.decay_fraction <= 1.0, 'schedule.decay_fraction',
         sc.decay_fraction, 'must be in [0, 1]')
  _check(sc.warmup_steps >= 0, 'schedule.warmup_steps', sc.warmup_steps,
         'must be >= 0')
  if sc.name == 'wsd' and c.branch.from_step is None:
    decay_start = c.num_steps - int(round(sc.decay_fraction * c.num_steps))
    _check(sc.warmup_steps <= decay_start, 'schedule.warmup_steps',
           sc.warmup_steps, f'runs into the decay, which starts at step '
           f'{decay_start} (num_steps={c.num_steps}, '
           f'decay_fraction={sc.decay_fraction})')
  else:
    _check(sc.warmup_steps <= c.num_steps, 'schedule.warmup_steps',
           sc.warmup_steps, f'must be <= num_steps={c.num_steps}')
  if sc.name == 'wsd_s':
    budgets = tuple(sc.budgets or ())
    _check(len(budgets) > 0, 'schedule.budgets', sc.budgets,
           'must list the step budgets for schedule.name=wsd_s')
    _check(all(b > a for a, b in zip((0,) + budgets, budgets)),
           'schedule.budgets', sc.budgets, 'must be strictly increasing and > 0')
    _check(budgets[-1] <= c.num_steps, 'schedule.budgets', sc.budgets,
           f'must not exceed num_steps={c.num_steps}')

  ck = c.checkpoint
  _check(ck.every_steps > 0, 'checkpoint.every_steps', ck.every_steps,
         'must be > 0')
  _check(ck.max_to_keep >= 1, 'checkpoint.max_to_keep', ck.max_to_keep,
         'must be >= 1')
  _check(c.ema.decay is None or 0.0 <= c.ema.decay < 1.0, 'ema.decay',
         c.ema.decay, 'must be in [0, 1) or None')

  b = c.branch
  set_fields = [b.from_workdir is not None, b.from_step is not None,
                b.decay_steps is not None]
  _check(all(set_fields) or not any(set_fields), 'branch', dict(b),
         'from_workdir, from_step and decay_steps must be set together')
  if all(set_fields):
    _check(b.from_step >= 0, 'branch.from_step', b.from_step, 'must be >= 0')
    _check(b.decay_steps > 0, 'branch.decay_steps', b.decay_steps,
           'must be > 0')

  mg = c.merge
  if mg.interval is not None:
    _check(mg.interval > 0, 'merge.interval', mg.interval, 'must be > 0')
  if mg.window is not None:
    _check(0 < mg.window <= c.num_steps, 'merge.window', mg.window,
           f'must be in (0, num_steps={c.num_steps}]')
  _one_of('merge.shape', mg.shape, ('uniform', 'linear', 'cosine', '1-sqrt'))

  a = c.analysis
  for field in ('sharpness_every', 'trace_every', 'ntk_every'):
    _check(a[field] is None or a[field] > 0, f'analysis.{field}', a[field],
           'must be > 0 or None')
  _check(a.sharpness_iters >= 2, 'analysis.sharpness_iters', a.sharpness_iters,
         'must be >= 2')


def _check_mesh(c: ml_collections.ConfigDict, device_count: int) -> None:
  """The mesh fits the devices and the global batch splits over it."""
  mesh, batch_size = c.mesh, c.data.batch_size
  _check(mesh.fsdp >= 1, 'mesh.fsdp', mesh.fsdp, 'must be >= 1')
  _check(mesh.data == -1 or mesh.data >= 1, 'mesh.data', mesh.data,
         'must be -1 (all devices) or >= 1')
  _check(mesh.fsdp_min_size >= 1, 'mesh.fsdp_min_size', mesh.fsdp_min_size,
         'must be >= 1')
  try:
    data, fsdp = sharding_lib.mesh_shape(mesh, device_count)
  except sharding_lib.MeshError as e:
    raise ConfigError(str(e)) from None
  _check(batch_size % (data * fsdp) == 0, 'data.batch_size', batch_size,
         f'must be divisible by the device count ({device_count}): the batch '
         f'is split over mesh.data={data} x mesh.fsdp={fsdp} devices')


def _validate_model_knobs(c: ml_collections.ConfigDict) -> None:
  """Normalization / init / parametrization / precision options of the model."""
  m, o = c.model, c.optimizer
  _one_of('model.norm_position', m.norm_position, models_lib.NORM_POSITIONS)
  if m.mix_ln_split is not None:
    _check(m.norm_position == 'mix', 'model.mix_ln_split', m.mix_ln_split,
           f'applies only to model.norm_position=mix, not {m.norm_position!r}')
    _check(0 <= m.mix_ln_split <= m.num_layers, 'model.mix_ln_split',
           m.mix_ln_split, f'must be in [0, model.num_layers={m.num_layers}]')
  _check(not m.layernorm_scaling or m.norm != 'none', 'model.layernorm_scaling',
         m.layernorm_scaling, 'needs a normalization (model.norm is none)')
  _one_of('model.init', m.init, models_lib.INITS)
  if m.init in ('fixup', 'zero'):
    _check(m.name in ('transformer', 'resnet'), 'model.init', m.init,
           f'zero-initializes residual branches; model.name={m.name!r} has '
           'none (use transformer or resnet)')
  _one_of('model.parametrization', m.parametrization,
          models_lib.PARAMETRIZATIONS)
  if m.antisymmetric_init:
    _check(m.name == 'mlp' and len(m.hidden_sizes) > 0
           and m.hidden_sizes[-1] % 2 == 0, 'model.antisymmetric_init',
           m.antisymmetric_init, 'needs model.name=mlp with an even last '
           f'hidden width, not {m.name!r} with hidden_sizes={m.hidden_sizes}')
  if m.parametrization == 'mup':
    _check(m.base_width is not None and m.base_width > 0, 'model.base_width',
           m.base_width, 'must be a positive width when '
           'model.parametrization=mup')
    _one_of('optimizer.name', o.name,
            parametrization.ADAM_LIKE + parametrization.SGD_LIKE)
  else:
    _check(m.base_width is None, 'model.base_width', m.base_width,
           f'applies only to model.parametrization=mup, not '
           f'{m.parametrization!r}')
  _one_of('model.quantization', m.quantization, (None, 'int4', 'fp4'))
  _one_of('model.softmax', m.softmax, losses.SOFTMAXES)
  if m.softmax != 'softmax':
    _check(c.loss.name != 'mse', 'model.softmax', m.softmax,
           'applies only to the cross-entropy loss, not loss.name=mse')
  _check(not c.loss.z_loss or c.loss.name != 'mse', 'loss.z_loss',
         c.loss.z_loss, 'applies only to the cross-entropy loss, not '
         'loss.name=mse')
  _check(isinstance(o.orthograd, bool), 'optimizer.orthograd', o.orthograd,
         'must be True or False')
  if o.lr_multipliers is not None:
    ok = all(len(rule) == 2 and isinstance(rule[0], str)
             and float(rule[1]) > 0 for rule in o.lr_multipliers)
    _check(ok, 'optimizer.lr_multipliers', o.lr_multipliers,
           'must be None or ((regex, multiplier > 0), ...) pairs')


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _positive_ints(field: str, values: Any, minimum: int = 1) -> None:
  ok = isinstance(values, (tuple, list)) and all(
      _is_int(v) and v >= minimum for v in values)
  _check(ok, field, values, f'must be a tuple of integers >= {minimum}')


def _validate_sizes(c: ml_collections.ConfigDict) -> None:
  """Sizes, counts and paths: positive where a zero would only fail later
  (a division by zero, an empty sequence, a NaN loss) or outside a config
  error."""
  _check(_is_int(c.seed) and c.seed >= 0, 'seed', c.seed,
         'must be an integer >= 0')
  m, d = c.model, c.data
  for field in ('d_model', 'num_layers', 'num_heads', 'mlp_ratio', 'max_len',
                'blocks_per_stage'):
    _check(_is_int(m[field]) and m[field] > 0, f'model.{field}', m[field],
           'must be an integer > 0')
  _positive_ints('model.hidden_sizes', m.hidden_sizes, minimum=0 if
                 not m.hidden_sizes else 1)
  _positive_ints('model.channels', m.channels)
  for field in ('seq_len', 'max_bytes', 'input_dim', 'teacher_width',
                'output_dim', 'num_train', 'modulus'):
    _check(_is_int(d[field]) and d[field] > 0, f'data.{field}', d[field],
           'must be an integer > 0')
  _check(d.noise_std >= 0, 'data.noise_std', d.noise_std, 'must be >= 0')
  if d.name == 'bytes' and d.text_dir is not None:
    _check(os.path.isdir(d.text_dir), 'data.text_dir', d.text_dir,
           'is not a directory')
  if d.name == 'modular':
    _check(d.modulus >= 2, 'data.modulus', d.modulus, 'must be >= 2')
    _check(0 < d.train_fraction < 1, 'data.train_fraction', d.train_fraction,
           'must be in (0, 1)')
  _positive_ints('checkpoint.keep_steps', c.checkpoint.keep_steps, minimum=0)
  if c.schedule.budgets is not None:
    _positive_ints('schedule.budgets', c.schedule.budgets)


def _validate_llm(c: ml_collections.ConfigDict, device_count: int) -> None:
  """LLaMA-style model options, token files, gradient accumulation."""
  m, d, o = c.model, c.data, c.optimizer
  _one_of('model.position', m.position, models_lib.POSITIONS)
  _one_of('model.mlp', m.mlp, models_lib.MLPS)
  _one_of('model.remat', m.remat, tuple(models_lib.REMAT_POLICIES))
  _check(m.rope_theta > 0, 'model.rope_theta', m.rope_theta, 'must be > 0')
  _check(m.mlp_hidden is None or m.mlp_hidden > 0, 'model.mlp_hidden',
         m.mlp_hidden, 'must be > 0 or None')
  _check(isinstance(m.use_bias, bool), 'model.use_bias', m.use_bias,
         'must be True or False')
  if m.name == 'transformer':
    head_dim = m.d_model // m.num_heads
    _check(m.position != 'rope' or head_dim % 2 == 0, 'model.position',
           m.position, f'rope needs an even head dimension, not d_model / '
           f'num_heads = {head_dim}')
  else:
    for field, default in (('position', 'learned'), ('mlp', 'gelu'),
                           ('remat', 'none'), ('use_bias', True)):
      _check(m[field] == default, f'model.{field}', m[field],
             f'applies only to model.name=transformer, not {m.name!r}')
  data_vocab = {'markov': d.vocab_size, 'bytes': 256}.get(d.name)
  if m.vocab_size is not None:
    _check(m.name == 'transformer', 'model.vocab_size', m.vocab_size,
           f'applies only to model.name=transformer, not {m.name!r}')
    _check(data_vocab is None or m.vocab_size >= data_vocab,
           'model.vocab_size', m.vocab_size, f'must be >= the vocabulary of '
           f'data.name={d.name} ({data_vocab}) or None')
  k = o.grad_accum_steps
  _check(isinstance(k, int) and k >= 1, 'optimizer.grad_accum_steps', k,
         'must be an integer >= 1')
  _check(d.batch_size % k == 0, 'optimizer.grad_accum_steps', k,
         f'must divide data.batch_size={d.batch_size}')
  micro = d.batch_size // k
  # k = 1: the batch itself is checked against the devices (_check_mesh).
  _check(k == 1 or micro % device_count == 0, 'optimizer.grad_accum_steps', k,
         f'leaves micro-batches of {micro} examples, which do not split over '
         f'the {device_count} devices (of all processes) the batch is '
         'split over')
  _check(micro % o.sam.num_microbatches == 0, 'optimizer.sam.num_microbatches',
         o.sam.num_microbatches, f'must divide the micro-batch of {micro} '
         f'examples (data.batch_size / optimizer.grad_accum_steps)')
  peak = c.throughput.peak_flops
  _check(peak is None or peak > 0, 'throughput.peak_flops', peak,
         'must be > 0 or None')
  if d.name == 'tokens':
    try:
      data_lib.tokens.check(d.path, d.seq_len, m.vocab_size)
    except data_lib.TokenDataError as e:
      raise ConfigError(f'config.data.path={d.path!r}: {e}') from None
