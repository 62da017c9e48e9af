r"""Hessian spectrum of one checkpoint: ``python -m analysis.hessian``.

  python -m analysis.hessian --workdir=runs/wsd --step=3000 --k=10 --density

Flags:
  --workdir=DIR       the run (required)
  --step=N            checkpoint step (default: the latest)
  --kind=hessian|ggn  the Hessian of the loss, or its Gauss-Newton part
  --k=10              top eigenvalues (Lanczos; --num_iters, --tol)
  --density           also the SLQ spectral density (--num_probes probes of
                      --density_iters Lanczos steps)
  --trace             also Hutchinson's trace (--num_probes probes)
  --block=NAME|REGEX  one diagonal block (attention, mlp, norm, embedding, or
                      a regular expression on parameter names)
  --num_batches=4     held-out batches in the loss
  --seed=0            seed of the start and probe vectors
  --out=DIR           output directory (default: the workdir)

Writes ``hessian_<step>.json`` (see `analysis.hessian.checkpoint_spectrum`)
and ``hessian_<step>.png`` (the top eigenvalues and the density).
"""

import json
import os
import re

from absl import flags
from absl import logging

from dynamics import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
_STEP = flags.DEFINE_integer('step', None,
                             'Checkpoint step (default: the latest).')
_KIND = flags.DEFINE_enum(
    'kind', 'hessian', ['hessian', 'ggn'],
    'The Hessian of the loss, or its generalized Gauss-Newton part '
    'J^T H_out J (positive semi-definite for cross-entropy and MSE).')
_K = flags.DEFINE_integer('k', 10, 'Top eigenvalues.', lower_bound=1)
_NUM_ITERS = flags.DEFINE_integer(
    'num_iters', None, 'Max Lanczos HVPs for the top-k (default 3k+30).',
    lower_bound=1)
_TOL = flags.DEFINE_float('tol', 1e-4, 'Relative Ritz residual to stop at.',
                          lower_bound=0.0)
_DENSITY = flags.DEFINE_boolean('density', False,
                                'Also the SLQ spectral density.')
_NUM_PROBES = flags.DEFINE_integer(
    'num_probes', 10, 'Probe vectors of the density and the trace.',
    lower_bound=1)
_DENSITY_ITERS = flags.DEFINE_integer(
    'density_iters', 80, 'Lanczos steps per density probe.', lower_bound=1)
_TRACE = flags.DEFINE_boolean(
    'trace', False, "Also Hutchinson's trace (--num_probes probes, >= 2).")
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 4,
                                    'Held-out batches in the loss.',
                                    lower_bound=1)
_BLOCK = flags.DEFINE_string(
    'block', None, 'Restrict to a parameter block: attention, mlp, norm, '
    'embedding, or a regular expression on parameter names.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the start and probe vectors.')
_OUT = flags.DEFINE_string('out', None,
                           'Output directory (default: the workdir).')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  # Deferred: --help answers without loading flax, orbax or matplotlib.
  from analysis import hessian  # pylint: disable=g-import-not-at-top
  from analysis import plots  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  from dynamics import runs  # pylint: disable=g-import-not-at-top

  run = runs.Run.open(_WORKDIR.value, defaults=base.get_config())
  if _BLOCK.value is not None:
    try:
      hessian.block_mask(run.abstract_state.params, _BLOCK.value)
    except (ValueError, re.error) as e:
      raise cli.UserError(f'--block={_BLOCK.value}: {e}') from None
  result = hessian.checkpoint_spectrum(
      run, _STEP.value, kind=_KIND.value, k=_K.value,
      num_iters=_NUM_ITERS.value, tol=_TOL.value, density=_DENSITY.value,
      num_probes=_NUM_PROBES.value, density_iters=_DENSITY_ITERS.value,
      trace=_TRACE.value, num_batches=_NUM_BATCHES.value, block=_BLOCK.value,
      seed=_SEED.value)
  out = _OUT.value or run.workdir
  os.makedirs(out, exist_ok=True)
  json_path = os.path.join(out, f"hessian_{result['step']}.json")
  png_path = os.path.join(out, f"hessian_{result['step']}.png")
  replaced = os.path.exists(json_path)
  with open(json_path, 'w') as f:
    json.dump(result, f)
  plots.hessian_spectrum(result, png_path)
  print(f'wrote {json_path} and {png_path}'
        + (' (replacing the previous ones)' if replaced else ''))


if __name__ == '__main__':
  cli.run(main, required=['workdir'])
