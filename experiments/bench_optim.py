r"""Step time of the paper optimizers relative to ``optax.adamw``, same model.

Command:
  python -m experiments.bench_optim                      # CPU smoke transformer
  python -m experiments.bench_optim --preset=gpt2_small  # on a GPU

Each optimizer gets one jitted step ``value_and_grad -> tx.update ->
apply_updates`` (SAM: ``sam_gradient`` then AdamW) on the same model and
batch, with its state donated. Timing is interleaved (every repeat times every
optimizer in turn, so drifts in machine load hit all of them alike). The table
reports, per optimizer, the median per-step time over rounds and the median over
rounds of its ratio to AdamW *in the same round* (a paired ratio: on a shared,
noisy machine it is far steadier than a ratio of medians). Targets: AdamP/SGDP <= 1.10x and Stable-SPAM <= 1.05x on the CPU smoke
transformer (<= 1.03x on GPT-2 small on a GPU); SAM <= 2.05x. SOAP and Muon
(``optax.contrib.muon``, AdamW on its non-matrix leaves) are today's baselines:
SOAP's step here includes its eigenbasis refresh every 10 steps, amortized.
"""

import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax
import optax.contrib

from configs import wsd
from dynamics import data as data_lib
from dynamics import outputs
from dynamics import models as models_lib
from dynamics.optim.adamp import adamp, sgdp
from dynamics.optim.sam import sam_gradient
from dynamics.optim.soap import soap
from dynamics.optim.stable_spam import stable_spam

_PRESET = flags.DEFINE_enum('preset', 'smoke', ['smoke', 'gpt2_small'],
                            'smoke: configs/wsd.py:smoke; gpt2_small: 12x768.')
_REPEATS = flags.DEFINE_integer('repeats', 60, 'Interleaved timing rounds.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per timing round.')
_RESULTS = flags.DEFINE_string('results', None, 'Also write the figures as '
                               'JSON here (with versions and provenance).')

LR = 1e-3
OPTIMIZERS = {
    'adamw': lambda: optax.adamw(LR, weight_decay=0.1),
    'adamp': lambda: adamp(LR, weight_decay=0.1),
    'sgdp': lambda: sgdp(LR, momentum=0.9, weight_decay=0.1),
    'stable_spam': lambda: stable_spam(LR, weight_decay=0.1),
    'sam(adamw)': lambda: optax.adamw(LR, weight_decay=0.1),
    # The reference's defaults (refresh every 10 steps: one per timing round).
    'soap': lambda: soap(LR, weight_decay=0.1, precondition_frequency=10),
    'muon': lambda: optax.contrib.muon(LR, weight_decay=0.1,
                                       adam_weight_decay=0.1),
}


def _config(preset: str):
  c = wsd.get_config('smoke')
  if preset == 'gpt2_small':
    c.model.d_model, c.model.num_layers, c.model.num_heads = 768, 12, 12
    c.model.max_len = c.data.seq_len = 1024
    c.data.vocab_size, c.data.batch_size = 512, 8
    c.model.dtype = 'bfloat16'
  return c


def _make_step(model, tx, use_sam: bool):
  def loss_fn(params, batch):
    logits = model.apply({'params': params}, batch['inputs'])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['targets']).mean()

  def step(params, opt_state, batch):
    if use_sam:
      loss, grads = sam_gradient(loss_fn, params, batch, rho=0.05)
    else:
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def run(preset: str, repeats: int, steps: int) -> dict:
  """Seconds per step of each optimizer in every round, measured interleaved."""
  config = _config(preset)
  dataset = data_lib.get_dataset(config)
  model = models_lib.build_model(config.model, dataset.info)
  batch = jax.tree.map(jnp.asarray, dataset.train_batch(0))
  init = model.init(jax.random.PRNGKey(0), batch['inputs'])['params']
  runners = {}
  for name, make in OPTIMIZERS.items():
    tx = make()
    params = jax.tree.map(jnp.copy, init)
    step = _make_step(model, tx, name.startswith('sam'))
    carry = step(params, tx.init(params), batch)  # compile
    jax.block_until_ready(carry)
    runners[name] = [step, carry]
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      step, (params, opt_state, _) = runner
      start = time.perf_counter()
      for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, batch)
      jax.block_until_ready((params, opt_state, loss))
      times[name].append((time.perf_counter() - start) / steps)
      runner[1] = (params, opt_state, loss)
  return times


def main(argv):
  del argv
  times = run(_PRESET.value, _REPEATS.value, _STEPS.value)
  print(f'{_PRESET.value} transformer on {jax.devices()[0].platform}, '
        f'{_REPEATS.value} interleaved repeats x {_STEPS.value} steps')
  print(f'{"optimizer":<14}{"ms/step":>10}{"vs adamw":>10}{"(p25-p75)":>16}')
  for name, t in times.items():
    ratios = sorted(a / b for a, b in zip(t, times['adamw']))
    q = lambda f: ratios[int(f * (len(ratios) - 1))]
    print(f'{name:<14}{1e3 * statistics.median(t):>10.3f}'
          f'{statistics.median(ratios):>9.3f}x{q(0.25):>8.3f}-{q(0.75):.3f}')
  if _RESULTS.value:
    record = {'preset': _PRESET.value, 'device': jax.devices()[0].device_kind,
              'repeats': _REPEATS.value, 'steps': _STEPS.value,
              'seconds_per_step_median': {n: statistics.median(t)
                                          for n, t in times.items()},
              'paired_ratio_to_adamw_median': {
                  n: statistics.median(a / b for a, b in zip(t, times['adamw']))
                  for n, t in times.items()},
              'rounds_seconds': times, 'jax': jax.__version__}
    print(outputs.wrote([_RESULTS.value],
                        outputs.write_json(_RESULTS.value, record,
                                           provenance=True)))


if __name__ == '__main__':
  app.run(main)
