r"""The training Jacobian's spectrum of a config: ``python -m analysis.jacobian``.

  python -m analysis.jacobian --config=configs/jacobian.py[:smoke]

Flags:
  --config=PATH[:VARIANT]  the run to differentiate (required); any field can
                           be overridden with --config.FIELD=VALUE
  --bulk_tol=0.01          bulk: singular values within this of 1
  --hessian_k=10           top Hessian eigenvectors compared
  --dense_max=5000         largest model for the dense Jacobian (else Lanczos)
  --svd_k=20               singular triplets per end for larger models
  --chunk_size=128         basis vectors per forward-mode pass
  --output_dir=DIR         default: runs/<config.name>/jacobian
  --nocompilation_cache    do not use JAX's persistent compilation cache
                           (on by default: dynamics.compile_cache)

Writes ``spectrum.json`` (see `analysis.jacobian.analyze_run`) and
``spectrum.png`` (`analysis.plots.jacobian_spectrum`).
"""

import os

from absl import flags
from absl import logging
from ml_collections import config_flags

from dynamics import cli, compile_cache

_CACHE = compile_cache.define_flag(__name__)
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'configs/jacobian.py[:smoke]', lock_config=True)
_BULK_TOL = flags.DEFINE_float('bulk_tol', 1e-2,
                               'Bulk: singular values within this of 1.',
                               lower_bound=0.0)
_HESSIAN_K = flags.DEFINE_integer('hessian_k', 10,
                                  'Top Hessian eigenvectors compared.',
                                  lower_bound=1)
_DENSE_MAX = flags.DEFINE_integer('dense_max', 5000,
                                  'Largest model for the dense Jacobian.',
                                  lower_bound=0)
_SVD_K = flags.DEFINE_integer('svd_k', 20,
                              'Singular triplets per end (larger models).',
                              lower_bound=1)
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', 128,
                                   'Basis vectors per forward-mode pass.',
                                   lower_bound=1)
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None,
                                  'Default: runs/<config.name>/jacobian.')


def main(argv):
  del argv
  if _CACHE.value:  # Before anything compiles.
    compile_cache.enable()
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  # Deferred: --help answers without loading flax, orbax or matplotlib.
  from analysis import jacobian  # pylint: disable=g-import-not-at-top
  from analysis import plots  # pylint: disable=g-import-not-at-top
  from dynamics import config_lib  # pylint: disable=g-import-not-at-top
  from dynamics import outputs  # pylint: disable=g-import-not-at-top
  from dynamics import runs  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  config_lib.validate(config)  # A bad value: one line, before compiling.
  out = _OUTPUT_DIR.value or os.path.join('runs', config.name, 'jacobian')
  outputs.check_writable(out, '--output_dir', default=_OUTPUT_DIR.value is None)
  try:
    report = jacobian.analyze_run(
        runs.Run(config), bulk_tol=_BULK_TOL.value, hessian_k=_HESSIAN_K.value,
        dense_max=_DENSE_MAX.value, svd_k=_SVD_K.value,
        chunk_size=_CHUNK_SIZE.value)
  except jacobian.RandomnessNotFixedError as e:
    raise cli.UserError(str(e)) from None
  wrote = outputs.write_report(out, 'spectrum', report, plots.jacobian_spectrum)
  print(jacobian.report.spectrum_line(report))
  bulk = report['hessian']['overlap']['bulk']
  print('overlap of the top Hessian eigenvectors with the bulk: '
        + ', '.join(f'{b:.2f}' for b in bulk))
  print(wrote)


if __name__ == '__main__':
  cli.run(main, required=['config'])
