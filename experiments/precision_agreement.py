r"""How closely gradient accumulation and ``remat`` agree with the plain step,
in float32 and under bfloat16 compute.

Command (CPU, ~1 minute)::

  python -m experiments.precision_agreement [--steps=8] [--out=FILE]

For ``configs/wsd.py:smoke`` (a 2-block transformer on the Markov language)
it runs ``--steps`` updates of `dynamics.step.train_step` from the same
initialization and batches, plain, with ``optimizer.grad_accum_steps=2`` and
with ``model.remat=full``, in ``model.dtype`` float32 and bfloat16 (float32
parameters, optimizer state and loss), and prints the relative difference
of the final parameters from the plain run's, ``||p - p_plain|| /
||p_plain||``, and whether they are bitwise equal.
"""

from typing import Any, Dict

from absl import app
from absl import flags

from dynamics import outputs  # Also takes the start load (provenance).



def final_params(dtype: str, steps: int, **changes: Any):
  """The parameters after ``steps`` updates of the smoke config."""
  import jax
  from configs import wsd
  from dynamics import runs
  from dynamics import step as step_lib
  c = wsd.get_config('smoke')
  c.model.dtype = dtype
  c.optimizer.grad_accum_steps = changes.get('grad_accum_steps', 1)
  c.model.remat = changes.get('remat', 'none')
  run = runs.Run(c)
  state = run.init_state()
  step = step_lib.make_train_step(run.model, run.tx, run.schedule,
                                  run.options)
  for i in range(steps):
    state, _ = step(state, jax.tree.map(jax.numpy.asarray,
                                        run.dataset.train_batch(i)))
  return state.params


def agreement(steps: int) -> Dict[str, Dict[str, Any]]:
  """``{dtype: {variant: {relative_difference, bitwise}}}``."""
  import jax
  import jax.numpy as jnp
  from jax.flatten_util import ravel_pytree
  out = {}
  for dtype in ('float32', 'bfloat16'):
    plain = ravel_pytree(final_params(dtype, steps))[0]
    out[dtype] = {}
    for name, change in (('grad_accum_2', {'grad_accum_steps': 2}),
                         ('remat_full', {'remat': 'full'})):
      p = ravel_pytree(final_params(dtype, steps, **change))[0]
      out[dtype][name] = dict(
          relative_difference=float(jnp.linalg.norm(p - plain)
                                    / jnp.linalg.norm(plain)),
          bitwise=bool(jnp.array_equal(p, plain)))
  out['steps'] = steps
  out['config'] = 'configs/wsd.py:smoke'
  out['seed'] = 0
  out['jax'] = jax.__version__
  out['device'] = jax.devices()[0].device_kind
  return out


def define_flags() -> None:
  """The command's flags, defined only when it runs as a command (a test
  imports `agreement` beside other commands' flags)."""
  flags.DEFINE_integer('steps', 8, 'Updates per run.')
  flags.DEFINE_string('out', None, 'Also write the results as JSON.')


def main(argv):
  del argv
  f = flags.FLAGS
  r = agreement(f.steps)
  for dtype in ('float32', 'bfloat16'):
    for name, v in r[dtype].items():
      print(f'{dtype:<9} {name:<13} relative difference after {r["steps"]} '
            f'steps {v["relative_difference"]:.2e}  bitwise {v["bitwise"]}')
  if f.out:
    print(outputs.wrote([f.out], outputs.write_json(f.out, r, provenance=True)))


if __name__ == '__main__':
  define_flags()
  app.run(main)
