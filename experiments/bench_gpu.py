r"""One device run: training and analysis throughput, each against its baseline.

Command (one H100 / H200; under 6 minutes)::

  python -m experiments.bench_gpu --out=results/gpu.json

On a CPU, the same code at toy sizes (the test suite runs it, < 1 minute)::

  python -m experiments.bench_gpu --tiny --out=/tmp/gpu_tiny.json

Parts (`experiments.bench_gpu_parts`), in this order, each measured against
its baseline in the same process:

* ``train_step_gpt2`` / ``train_step_llama``: `dynamics.step.train_step` on
  GPT-2 small (12 x 768, T 1,024, V 50,304, batch 16) and LLaMA-130M
  (12 x 768, SwiGLU, RoPE, T 256, V 32,000, batch 64) shapes, bf16 compute
  with float32 parameters, optimizer state and loss: the plain step (XLA
  attention, full logits) vs the levers (cuDNN attention on a GPU,
  ``loss.vocab_chunk``); step time, tokens/s, MFU from
  `dynamics.throughput.flops_per_token`, XLA's compiled memory and the
  device's peak, and whether any step after the first recompiled;
* ``optimizers``: AdamP, Stable-SPAM (and SOAP, Muon when
  `dynamics.optim.OPTIMIZERS` has them; else skipped with a note) and SAM on
  AdamW, step time over ``adamw`` (optax's);
* ``curvature``: HVP and GGN-vector product vs one gradient on GPT-2 small
  (time, compiled memory); ``eigenpairs``: top-5 Hessian eigenpairs to 1e-3
  relative residual (HVPs, time, the Lanczos basis' bytes);
* ``ntk``: the empirical NTK 256 x 256 of a 784-512-512-10 MLP, 'jacobian'
  and 'ntvp', and what ``method='auto'`` picks;
* ``training_jacobian``: the dense 4,810^2 training Jacobian of
  ``configs/jacobian.py`` vs the reference's ``jax.jacfwd``;
* ``sharpness``: a training run with ``analysis.sharpness_every=100`` vs
  without (overhead).

Each part has a time budget (`BUDGETS_S`); a part whose budget no longer fits
the total (``--budget_s``, 330 s) is skipped and says so, as is a part that
fails (its error in one line); the others go on. The JSON holds the device,
JAX / jaxlib / CUDA versions, the XLA flags and every figure.

XLA GPU flags set before JAX starts (`XLA_GPU_FLAGS`; ``--xla_flags``
replaces them, ``--xla_flags=`` sets none): the latency-hiding scheduler
(overlaps independent work, e.g. the optimizer's with the next layer's
matmuls) and cuBLAS rather than Triton for GEMMs (the JAX GPU performance
guide's advice for transformer training). On a CPU they are parsed and
ignored; this jaxlib rejects an unknown flag, which the suite's test
catches.
"""

import os
import sys
import tempfile
import time
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging

XLA_GPU_FLAGS = ('--xla_gpu_enable_latency_hiding_scheduler=true '
                 '--xla_gpu_enable_triton_gemm=false')

_OUT = flags.DEFINE_string('out', 'results/gpu.json', 'Where the JSON goes.')
_TINY = flags.DEFINE_bool('tiny', False, 'Toy sizes (CPU, < 1 minute).')
_BUDGET = flags.DEFINE_float('budget_s', 330.0,
                             'Total seconds; parts that no longer fit are '
                             'skipped.')
_XLA_FLAGS = flags.DEFINE_string('xla_flags', None,
                                 'XLA flags to add (None: XLA_GPU_FLAGS).')
_PARTS = flags.DEFINE_list('parts', None, 'Run only these parts.')

# Seconds each part may take on one H100 (compilation included).
BUDGETS_S = {'train_step_gpt2': 70, 'curvature': 40, 'ntk': 15,
             'optimizers': 100, 'eigenpairs': 40, 'train_step_llama': 50,
             'sharpness': 50, 'training_jacobian': 60}


def _versions() -> Dict[str, Any]:
  import importlib.metadata as md
  import jax
  import jaxlib
  out = {'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
         'platform_version': jax.devices()[0].client.platform_version,
         'python': sys.version.split()[0]}
  for dist in ('jax-cuda12-plugin', 'jax-cuda12-pjrt', 'nvidia-cudnn-cu12',
               'nvidia-cublas-cu12'):
    try:
      out[dist] = md.version(dist)
    except md.PackageNotFoundError:
      pass
  return out


def _parts(sizes, workdir, record):
  from experiments import bench_gpu_parts as P
  # The levered GPT-2 step is the optimizers' AdamW baseline (same config).
  adamw = lambda: record['parts'].get('train_step_gpt2', {}).get('levers')
  return {
      'train_step_gpt2': lambda: P.part_train_step(sizes, 'gpt2'),
      'curvature': lambda: P.part_curvature(sizes),
      'ntk': lambda: P.part_ntk(sizes),
      'optimizers': lambda: P.part_optimizers(sizes, adamw()),
      'eigenpairs': lambda: P.part_eigenpairs(sizes),
      'train_step_llama': lambda: P.part_train_step(sizes, 'llama'),
      'sharpness': lambda: P.part_sharpness(sizes, workdir),
      'training_jacobian': lambda: P.part_training_jacobian(sizes),
  }


def summary(name: str, r: Dict[str, Any]) -> str:
  """One table line of a part's result."""
  pct = lambda x: 'n/a' if x is None else f'{100 * x:.1f}%'
  if 'skipped' in r or 'error' in r:
    return r.get('skipped') or 'ERROR ' + r['error']
  if name.startswith('train_step'):
    p, l = r['plain'], r['levers']
    return (f'plain {p["step_ms"]:.2f} ms ({p["tokens_per_s"]:,.0f} tok/s, '
            f'MFU {pct(p["mfu"])}) | levers {l["step_ms"]:.2f} ms '
            f'({l["tokens_per_s"]:,.0f} tok/s, MFU {pct(l["mfu"])}) | '
            f'x{r["speedup"]:.2f}')
  if name == 'optimizers':
    return ', '.join(f'{k} {v:.2f}x' for k, v in r['ratio_to_adamw'].items())
  if name == 'curvature':
    return (f'gradient {r["gradient_ms"]:.2f} ms; HVP {r["hvp_over_gradient"]:.2f}x'
            f', GGN-vector {r["ggn_over_gradient"]:.2f}x')
  if name == 'eigenpairs':
    return (f'{r["hvps"]} HVPs, {r["seconds_with_compile"]:.1f} s, converged '
            f'{r["converged"]}')
  if name == 'ntk':
    return (f'{r["examples"]}^2: jacobian {r["jacobian_ms"]:.1f} ms, ntvp '
            f'{r["ntvp_ms"]:.1f} ms, auto picks {r["auto_picks"]}')
  if name == 'training_jacobian':
    return (f'{r["shape"]}: {r["ours_s"]:.1f} s vs jacfwd '
            f'{r["reference_jacfwd_s"]:.1f} s (x{r["speedup"]:.2f})')
  if name == 'sharpness':
    return f'overhead {pct(r["overhead"])} over {r["steps"]} steps'
  return str(r)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  os.environ['XLA_FLAGS'] = ' '.join(filter(None, (
      os.environ.get('XLA_FLAGS', ''),
      XLA_GPU_FLAGS if _XLA_FLAGS.value is None else _XLA_FLAGS.value)))
  import jax
  from dynamics import outputs
  from experiments import bench_gpu_parts as P
  sizes = P.TINY if _TINY.value else P.FULL
  names = _PARTS.value or list(BUDGETS_S)
  unknown = sorted(set(names) - set(BUDGETS_S))
  if unknown:
    raise app.UsageError(f'--parts: unknown {unknown}; one of {list(BUDGETS_S)}')
  device = jax.devices()[0]
  record = dict(device=device.device_kind, platform=device.platform,
                device_count=jax.device_count(), versions=_versions(),
                xla_flags=os.environ['XLA_FLAGS'], tiny=_TINY.value,
                budget_s=_BUDGET.value, shapes=P.dataclasses.asdict(sizes),
                parts={})
  print(f'# bench_gpu on {jax.device_count()} x {device.device_kind} '
        f'(jax {jax.__version__}); XLA_FLAGS={os.environ["XLA_FLAGS"]!r}',
        flush=True)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    parts = _parts(sizes, workdir, record)
    for name in names:
      elapsed = time.perf_counter() - start
      if not _TINY.value and elapsed + BUDGETS_S[name] > _BUDGET.value:
        r = {'skipped': f'skipped: its budget {BUDGETS_S[name]} s does not '
                        f'fit the {_BUDGET.value - elapsed:.0f} s left'}
      else:
        t0 = time.perf_counter()
        try:
          r = parts[name]()
        except Exception as e:  # pylint: disable=broad-except
          r = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
                        if str(e) else type(e).__name__}
        r['seconds'] = time.perf_counter() - t0
      record['parts'][name] = r
      print(f'{name:<18} {summary(name, r)}', flush=True)
  record['total_s'] = time.perf_counter() - start
  print(f'total {record["total_s"]:.0f} s')
  print(outputs.wrote([_OUT.value], outputs.write_json(_OUT.value, record,
                                                       indent=1)))
  if any('error' in r for r in record['parts'].values()):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
