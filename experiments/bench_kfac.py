r"""KFAC / EKFAC products against a gradient, an HVP and a GGN product.

Command: ``python -m experiments.bench_kfac [--config=configs/wsd.py]
[--smoke] [--out=PATH]``

On the config's model at initialization, one held-out batch: the seconds of
a jitted gradient, of a Hessian-vector product, of a GGN-vector product and
of the KFAC and EKFAC products (the factors built once), each as a multiple
of the gradient (the issue's goal: a KFAC product <= 0.25x a gradient), and
the seconds to build the factors (KFAC: one forward, ``num_samples``
backward passes and the eigendecompositions; EKFAC: a second pass for the
per-example eigenvalues). Medians of ``--repeats`` calls after a warm-up
(`dynamics.timing.seconds_per_call`). Printed, and written as JSON to
``--out`` (default ``results/bench_kfac.json``; ``--smoke``:
``results/bench_kfac.smoke.json``) with the machine and versions.
"""

import os
import platform
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from dynamics import cli
from dynamics import outputs  # Also takes the start load (provenance).
from dynamics.timing import seconds_per_call

_CONFIG = flags.DEFINE_string('config', 'configs/wsd.py', 'The config file.')
_SMOKE = flags.DEFINE_bool('smoke', False, 'Its :smoke variant (seconds).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per median.')
_OUT = flags.DEFINE_string('out', None, 'Where the JSON goes.')



def measure(config, repeats: int = 5) -> dict:
  """The timings (seconds) and ratios to a gradient, for ``config``."""
  from analysis import hessian as hs
  from analysis.hessian import kfac, likelihood
  from dynamics.runs import Run
  run = Run(config)
  params = run.init_state().params
  batch = jax.tree.map(jnp.asarray, run.dataset.eval_batch(0))
  loss_fn, model_fn = run.loss_fn(), run.model_fn()
  lik = likelihood.for_loss(run.options.loss, 1.0)
  grad = jax.jit(jax.grad(loss_fn))
  v = jax.tree.map(jnp.ones_like, params)
  out = {'params': int(sum(x.size for x in jax.tree.leaves(params))),
         'gradient_s': seconds_per_call(grad, params, batch, repeats=repeats)}
  ops = {'hvp': hs.curvature('hessian', params, [batch], loss_fn=loss_fn),
         'ggn': hs.curvature('ggn', params, [batch], model_fn=model_fn,
                             output_loss_fn=run.output_loss_fn())}
  stacked = jax.tree.map(lambda x: x[None], batch)
  for name, correction in (('kfac', False), ('ekfac', True)):
    build = lambda: kfac.factors(model_fn, params, stacked, likelihood=lik,
                                 eigenvalue_correction=correction)
    jax.block_until_ready(build())  # Compiles.
    start = time.perf_counter()
    kron = jax.block_until_ready(build())
    out[f'{name}_factors_s'] = time.perf_counter() - start
    out[f'{name}_layers'] = len(kron.layers)
    ops[name] = hs.Operator(kfac.matvec(kron), params, None, out['params'])
  for name, op in ops.items():
    out[f'{name}_s'] = seconds_per_call(op.matvec, v, repeats=repeats)
    out[f'{name}_vs_gradient'] = out[f'{name}_s'] / out['gradient_s']
  return out


def main(argv):
  del argv
  config = cli.config_from_file(_CONFIG.value,
                                'smoke' if _SMOKE.value else None)
  numbers = measure(config, _REPEATS.value)
  record = {'config': _CONFIG.value + (':smoke' if _SMOKE.value else ''),
            'numbers': numbers, 'machine': platform.platform(),
            'devices': str(jax.devices()), 'jax': jax.__version__}
  for key, value in numbers.items():
    print(f'{key:>22}: {value:.4g}' if isinstance(value, float)
          else f'{key:>22}: {value}')
  print(f"KFAC product / gradient: {numbers['kfac_vs_gradient']:.3f}x "
        f"(goal <= 0.25x); HVP / gradient: {numbers['hvp_vs_gradient']:.2f}x")
  path = _OUT.value or os.path.join(
      'results', 'bench_kfac' + ('.smoke' if _SMOKE.value else '') + '.json')
  print(outputs.wrote([path], outputs.write_json(path, record,
                                                 provenance=True)))


if __name__ == '__main__':
  app.run(main)
