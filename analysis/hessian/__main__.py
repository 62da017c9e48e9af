r"""Curvature of one checkpoint: ``python -m analysis.hessian``.

  python -m analysis.hessian --workdir=runs/wsd --step=3000 --k=10 --density
  python -m analysis.hessian --workdir=runs/wsd --step=3000 --blocks=layers

Flags:
  --workdir=DIR       the run (required)
  --step=N            checkpoint step (default: the latest)
  --kind=hessian      the matrix (the choices: --kind below, the keys of
                      analysis.hessian.registry.PRODUCTS)
  --k=10              top eigenvalues (Lanczos, converged to --tol or said)
  --density           also the SLQ spectral density (--num_probes probes)
  --trace             also the trace (--trace_method, to a standard error of
                      one percent)
  --trace_method=hutch++  the estimator (analysis.hessian.registry.TRACE_METHODS;
                      xtrace has no standard error and runs as hutch++)
  --block=NAME|REGEX  one diagonal block (attention, mlp, norm, embedding, or
                      a regular expression on parameter names)
  --blocks=layers     instead: a per-block table (layers, tensors, or a block
                      and the rest) of top eigenvalue, trace and Frobenius norm
  --noise_std=SIGMA   the Gaussian noise model of an MSE loss (Fisher kinds)
  --num_samples=1     labels sampled per position for --kind=fisher: the
                      Fisher is a Monte Carlo estimate of the GGN from that
                      many draws (one draw inflates its top eigenvalues)
  --num_batches=4     held-out batches in the loss
  --seed=0            seed of the start and probe vectors
  --fsdp=N            run on every device, the parameters split in N shards
                      and each batch over all devices, as training shards
                      them (default: one device)
  --vocab_chunk=C     the GGN's softmax by vocabulary chunks of C columns
                      (never a tokens x vocab array; default: the run's
                      loss.vocab_chunk, or 8192 for vocabularies >= 16384;
                      0: off)
  --out=DIR           output directory (default: the workdir)
  --nocompilation_cache  do not use JAX's persistent compilation cache (on
                      by default, in dynamics.compile_cache.default_dir())

Writes ``hessian_<step>_<kind>_k<k>[_<block>].json`` and ``.png`` (see
`analysis.hessian.checkpoint_spectrum`), or with ``--blocks``
``hessian_<step>_<kind>_blocks-<by>.json`` and ``.png`` (see
`analysis.hessian.checkpoint_blocks`); a file of the same arguments is
replaced, and the command says so.
"""

import re

from absl import flags
from absl import logging

from analysis.hessian import registry  # JAX-free: the names of the choices.
from dynamics import cli, compile_cache

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
_STEP = flags.DEFINE_integer('step', None,
                             'Checkpoint step (default: the latest).')
_KIND = flags.DEFINE_enum(
    'kind', 'hessian', list(registry.PRODUCTS), 'The matrix: ' + '; '.join(
        f'{name}: {entry.help}' for name, entry in registry.PRODUCTS.items())
    + '.')
_K = flags.DEFINE_integer('k', 10, 'Top eigenvalues.', lower_bound=1)
_NUM_ITERS = flags.DEFINE_integer(
    'num_iters', None, 'Cap on Lanczos HVPs (default: 40 + 20k + 10 log2 n).',
    lower_bound=1)
_TOL = flags.DEFINE_float(
    'tol', None, 'Relative residual to stop at (default: 1e-5 in float32, '
    '1e-9 in float64).', lower_bound=0.0)
_DENSITY = flags.DEFINE_boolean('density', False,
                                'Also the SLQ spectral density.')
_NUM_PROBES = flags.DEFINE_integer(
    'num_probes', 10, 'Probe vectors of the density.', lower_bound=1)
_DENSITY_ITERS = flags.DEFINE_integer(
    'density_iters', None, 'Cap on Lanczos steps per density probe.',
    lower_bound=1)
_TRACE = flags.DEFINE_boolean('trace', False, 'Also the trace.')
_TRACE_METHOD = flags.DEFINE_enum(
    'trace_method', 'hutch++', list(registry.TRACE_METHODS), 'Trace estimator.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 4,
                                    'Held-out batches in the loss.',
                                    lower_bound=1)
_BLOCK = flags.DEFINE_string(
    'block', None, 'Restrict to a parameter block: attention, mlp, norm, '
    'embedding, or a regular expression on parameter names.')
_BLOCKS = flags.DEFINE_string(
    'blocks', None, 'Per-block report instead of the spectrum: layers, '
    'tensors, or a block name / regular expression (that block and the rest).')
_BLOCK_PROBES = flags.DEFINE_integer(
    'block_probes', 100, 'Probes per block trace and Frobenius norm (exact '
    'for blocks no larger).', lower_bound=2)
_NOISE_STD = flags.DEFINE_float(
    'noise_std', None, 'Noise model of an MSE loss for the Fisher kinds: the '
    'standard deviation of the Gaussian likelihood.', lower_bound=0.0)
_NUM_SAMPLES = flags.DEFINE_integer(
    'num_samples', 1, 'Labels sampled per position for --kind=fisher (a '
    'Monte Carlo estimate of the GGN from that many draws).', lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the start and probe vectors.')
_CACHE = compile_cache.define_flag(__name__)
_FSDP = flags.DEFINE_integer(
    'fsdp', None, 'Shard the parameters in N pieces over a mesh of every '
    'device (batches split over all of them); default: one device.',
    lower_bound=1)
_VOCAB_CHUNK = flags.DEFINE_integer(
    'vocab_chunk', None, "The GGN's softmax by vocabulary chunks of this many "
    "columns (default: the run's loss.vocab_chunk, or 8192 for vocabularies "
    '>= 16384; 0: off).', lower_bound=0)
_OUT = flags.DEFINE_string('out', None,
                           'Output directory (default: the workdir).')


def _print(line: str) -> None:
  print(line, flush=True)


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '-', text).strip('-') or 'block'


def _check(run, hessian):
  """Every argument, checked before anything is restored or compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  params = run.abstract_state.params  # Shapes only: nothing is compiled.
  count = sum(int(x.size) for x in jax.tree.leaves(params))
  if _BLOCK.value is not None and _BLOCKS.value is not None:
    raise cli.UserError('--block and --blocks exclude each other: --block is '
                        'one block\'s spectrum, --blocks a per-block table')
  if _BLOCK.value is not None:
    try:
      _, count = hessian.blocks.mask_weights(params, _BLOCK.value)
    except (ValueError, re.error) as e:
      raise cli.UserError(f'--block={_BLOCK.value}: {e}') from None
  if _BLOCKS.value is not None:
    try:
      hessian.layer_blocks(params, _BLOCKS.value)
    except (ValueError, re.error) as e:
      raise cli.UserError(f'--blocks={_BLOCKS.value}: {e}') from None
  elif _K.value > count:
    where = f'block {_BLOCK.value!r}' if _BLOCK.value else 'the model'
    raise cli.UserError(f'--k={_K.value} exceeds the {count:,} parameters of '
                        f'{where}')
  if _NOISE_STD.value is not None and _NOISE_STD.value <= 0:
    raise cli.UserError(f'--noise_std={_NOISE_STD.value}: must be > 0')
  if _VOCAB_CHUNK.value is not None and _KIND.value != 'ggn':
    raise cli.UserError(f'--vocab_chunk={_VOCAB_CHUNK.value}: applies to '
                        f'--kind=ggn only, not --kind={_KIND.value}')
  try:  # What the kind needs from the run (a Fisher of an MSE: noise_std).
    hessian.run_inputs(run, _KIND.value, None, _NOISE_STD.value,
                       _NUM_SAMPLES.value, _VOCAB_CHUNK.value)
  except ValueError as e:
    flag = ('--vocab_chunk' if str(e).startswith('vocab_chunk')
            else f'--kind={_KIND.value}')
    raise cli.UserError(f'{flag}: {e}') from None
  if _FSDP.value is not None:
    try:
      mesh = hessian.checkpoints.make_mesh(_FSDP.value)
      hessian.checkpoints.place(run, mesh, {}, {},
                                [run.dataset.eval_batch(0)])
    except ValueError as e:
      raise cli.UserError(f'--fsdp={_FSDP.value}: {e}') from None
  return run.resolve_step(_STEP.value)


def plot_blocks(report, path):
  """Bar charts of the per-block top eigenvalue, trace and Frobenius norm."""
  from analysis import plots  # pylint: disable=g-import-not-at-top
  rows = report['blocks']
  names = [r['name'] for r in rows]
  fig, axes = plots.figure(3, width=max(4.0, 0.45 * len(rows) + 2), height=4)
  for ax, field, label in zip(axes, ('top_eigenvalue', 'trace', 'frobenius'),
                              (r'$\lambda_{\max}$', 'trace', 'Frobenius norm')):
    values = [r[field] for r in rows]
    errors = [r.get(f'{field}_stderr', 0.0) for r in rows]
    ax.bar(range(len(rows)), values, yerr=errors if any(errors) else None)
    ax.axhline(report['whole'][field], color='k', ls='--', lw=1,
               label='whole model')
    ax.set_xticks(range(len(rows)), names, rotation=60, ha='right',
                  fontsize=7)
    ax.set_yscale('symlog', linthresh=max(1e-3 * max(map(abs, values + [
        report['whole'][field]])), 1e-12))
    ax.set(title=f"{label} per block ({report['kind']}, step "
                 f"{report['step']})")
    ax.legend(fontsize=7)
  return plots.save(fig, path)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  if _CACHE.value:  # Before anything compiles.
    compile_cache.enable()
  # Deferred: --help answers without loading flax, orbax or matplotlib.
  from analysis import hessian  # pylint: disable=g-import-not-at-top
  from analysis import plots  # pylint: disable=g-import-not-at-top
  from dynamics import outputs  # pylint: disable=g-import-not-at-top
  from dynamics import runs  # pylint: disable=g-import-not-at-top

  run = runs.Run.open(_WORKDIR.value)
  step = _check(run, hessian)
  out = _OUT.value or run.workdir
  outputs.check_writable(out, '--out', default=_OUT.value is None)
  if _BLOCKS.value is not None:
    stem = f'hessian_{step}_{_KIND.value}_blocks-{_slug(_BLOCKS.value)}'
    result = hessian.checkpoint_blocks(
        run, step, blocks=_BLOCKS.value, kind=_KIND.value,
        num_probes=_BLOCK_PROBES.value, tol=_TOL.value,
        num_batches=_NUM_BATCHES.value, noise_std=_NOISE_STD.value,
        seed=_SEED.value, log=_print, num_samples=_NUM_SAMPLES.value,
        fsdp=_FSDP.value, vocab_chunk=_VOCAB_CHUNK.value)
  else:
    stem = f'hessian_{step}_{_KIND.value}_k{_K.value}' + (
        f'_{_slug(_BLOCK.value)}' if _BLOCK.value else '')
    result = hessian.checkpoint_spectrum(
        run, step, kind=_KIND.value, k=_K.value, num_iters=_NUM_ITERS.value,
        tol=_TOL.value, density=_DENSITY.value, num_probes=_NUM_PROBES.value,
        density_iters=_DENSITY_ITERS.value, trace=_TRACE.value,
        trace_method=_TRACE_METHOD.value, num_batches=_NUM_BATCHES.value,
        block=_BLOCK.value, noise_std=_NOISE_STD.value, seed=_SEED.value,
        progress=True, log=_print, num_samples=_NUM_SAMPLES.value,
        fsdp=_FSDP.value, vocab_chunk=_VOCAB_CHUNK.value)
  print(outputs.write_report(
      out, stem, result,
      plot_blocks if _BLOCKS.value is not None else plots.hessian_spectrum))
  if _BLOCKS.value is None and not result['converged']:
    print('WARNING: not every eigenvalue converged (see above); raise '
          '--num_iters or loosen --tol')


if __name__ == '__main__':
  cli.run(main, required=['workdir'])
