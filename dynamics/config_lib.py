"""Config validation: every bad field fails here, before anything compiles.

Each component checks its own section (``models.check``, ``data.check``,
``losses.check``, ``optim.check``, ``schedules.check``, ``merging.check``,
``sharding.check``); `validate` runs them all, then the checks that cross
components (a model and its data, muP and the optimizer, the batch and its
micro-batches). `check_analysis` checks the ``analysis`` section the probes
read.
"""


import ml_collections
from absl import logging

from dynamics import config_migrate
from dynamics import data as data_lib
from dynamics import errors
from dynamics import losses
from dynamics import merging
from dynamics import models as models_lib
from dynamics import optim as optim_lib
from dynamics import parametrization
from dynamics import schedules as schedules_lib
from dynamics import sharding as sharding_lib
from dynamics.errors import ConfigError


def validate(config: ml_collections.ConfigDict, device_count: int = 1) -> None:
  """Raises ``ConfigError`` naming the first invalid value.

  Unknown fields never get here: ``configs.base.get_config()`` is locked, so
  ml_collections itself rejects them (and values of the wrong type). Set
  deprecated flat optimizer fields are first moved into their section
  (`dynamics.config_migrate.resolve_deprecated`, one warning each).

  Args:
    config: the experiment config.
    device_count: devices the global batch is split over.
  """
  for notice in config_migrate.resolve_deprecated(config):
    logging.warning(notice)
  _check_run(config)
  for check in (models_lib.check, data_lib.check, losses.check,
                optim_lib.check, schedules_lib.check, merging.check,
                check_analysis):
    check(config)
  sharding_lib.check(config, device_count)
  m, d, o = config.model, config.data, config.optimizer
  kinds = models_lib.MODELS[m.name].data
  errors.require(data_lib.DATASETS[d.name].kind in kinds, 'data.name', d.name,
                 f'model.name={m.name} needs {" or ".join(kinds)} data ('
                 + ' | '.join(n for n, e in data_lib.DATASETS.items()
                              if e.kind in kinds) + ')')
  if m.name == 'transformer' and m.position == 'learned':
    errors.require(d.seq_len <= m.max_len, 'data.seq_len', d.seq_len,
                   f'must be <= model.max_len={m.max_len}')
  data_vocab = data_lib.DATASETS[d.name].vocab(d)
  errors.require(m.vocab_size is None or data_vocab is None
                 or m.vocab_size >= data_vocab, 'model.vocab_size',
                 m.vocab_size, f'must be >= the vocabulary of data.name='
                 f'{d.name} ({data_vocab}) or None')
  if m.parametrization == 'mup':
    family = optim_lib.OPTIMIZERS[o.name].family
    errors.require(family in parametrization.MUP_RULES, 'optimizer.name',
                   o.name, f'has no muP learning-rate rule (family {family!r})')
  k, sam_m = o.grad_accum_steps, o.sam.num_microbatches
  errors.require(d.batch_size % k == 0, 'optimizer.grad_accum_steps', k,
                 f'must divide data.batch_size={d.batch_size}')
  micro = d.batch_size // k
  # k = 1: the batch itself is checked against the devices (sharding.check).
  errors.require(k == 1 or micro % device_count == 0,
                 'optimizer.grad_accum_steps', k, f'leaves micro-batches of '
                 f'{micro} examples, which do not split over the '
                 f'{device_count} devices (of all processes) the batch is '
                 'split over')
  errors.require(micro % sam_m == 0, 'optimizer.sam.num_microbatches', sam_m,
                 f'must divide the micro-batch of {micro} examples '
                 '(data.batch_size / optimizer.grad_accum_steps)')


def _check_run(c: ml_collections.ConfigDict) -> None:
  """The run's own fields: length, logging, seed, checkpoints, EMA, branch."""
  for field in ('num_steps', 'log_every', 'eval_every', 'eval_batches'):
    errors.integer(field, c[field], 1)
  # JAX keys a seed by its low 32 bits: a larger one would repeat another.
  errors.require(errors.is_int(c.seed) and 0 <= c.seed < 2**32, 'seed',
                 c.seed, 'must be an integer >= 0 and < 2**32')
  for field in ('log_per_layer', 'progress', 'stop_on_nonfinite',
                'distributed'):
    errors.boolean(field, c[field])
  ck = c.checkpoint
  errors.integer('checkpoint.every_steps', ck.every_steps, 1)
  errors.integer('checkpoint.max_to_keep', ck.max_to_keep, 1)
  errors.require(isinstance(ck.keep_steps, (tuple, list)) and all(
      errors.is_int(s) and s >= 0 for s in ck.keep_steps),
                 'checkpoint.keep_steps', ck.keep_steps,
                 'must be a tuple of integers >= 0')
  errors.number('ema.decay', c.ema.decay, at_least=0, below=1, optional=True)
  errors.number('throughput.peak_flops', c.throughput.peak_flops, above=0,
                optional=True)
  b = c.branch
  given = [b.from_workdir is not None, b.from_step is not None,
           b.decay_steps is not None]
  errors.require(all(given) or not any(given), 'branch', dict(b),
                 'from_workdir, from_step and decay_steps must be set together')
  if all(given):
    errors.integer('branch.from_step', b.from_step, 0)
    errors.integer('branch.decay_steps', b.decay_steps, 1)


def check_analysis(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` for an invalid ``config.analysis`` field (read by
  the training-time probes, ``analysis.probes``)."""
  a = config.analysis
  for field in ('sharpness_every', 'trace_every', 'ntk_every',
                'update_sharpness_every', 'update_ratio_every',
                'layer_trace_every', 'spectral_norm_every', 'gns_every',
                'activation_rms_every', 'histograms_every'):
    errors.integer(f'analysis.{field}', a[field], 1, optional=True)
  errors.integer('analysis.sharpness_iters', a.sharpness_iters, 2)
  errors.integer('analysis.sharpness_batches', a.sharpness_batches, 1)
  errors.integer('analysis.ntk_num_examples', a.ntk_num_examples, 1)
  # The probe's batch sources (analysis.probes.SharpnessProbe.from_config).
  errors.one_of('analysis.sharpness_data', a.sharpness_data, ('eval', 'train'))
  errors.integer('analysis.layer_trace_probes', a.layer_trace_probes, 2)
  errors.integer('analysis.gns_batches', a.gns_batches, 2)


__all__ = ['ConfigError', 'check_analysis', 'validate']
