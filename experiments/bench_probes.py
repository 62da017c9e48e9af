r"""The overhead of each training-time probe at its suggested cadence.

Command: ``python -m experiments.bench_probes [--config=configs/wsd.py]
[--smoke] [--out=PATH]``

On the config's run: the median seconds of a training step (``--steps``
back-to-back steps, waited for once, as in the loop), and of a warm call of
each probe of `analysis.update_probes` (its first call, compilation
included, reported apart); the overhead of a probe at cadence ``every`` is
``probe seconds / (every * step seconds)`` (the issue's goal: <= 5%).
Printed, and written as JSON to ``--out`` (default
``results/bench_probes.json``; ``--smoke``: ``results/bench_probes.smoke.json``).
"""

import os
import platform
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from dynamics import cli
from dynamics import outputs  # Also takes the start load (provenance).
from dynamics.timing import pipelined_seconds

_CONFIG = flags.DEFINE_string('config', 'configs/wsd.py', 'The config file.')
_SMOKE = flags.DEFINE_bool('smoke', False, 'Its :smoke variant (seconds).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed training steps.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per probe.')
_OUT = flags.DEFINE_string('out', None, 'Where the JSON goes.')



# The suggested cadence of each probe (config: analysis.<name>_every).
CADENCE = {'update_ratio': 100, 'spectral_norm': 100, 'update_sharpness': 200,
           'gns': 200, 'layer_trace': 1000, 'activation_rms': 100,
           'histograms': 1000}


def _probes():
  from analysis import update_probes as up
  from analysis.histogram_probe import HistogramProbe
  return [up.UpdateRatioProbe(CADENCE['update_ratio']),
          up.SpectralNormProbe(CADENCE['spectral_norm']),
          up.UpdateSharpnessProbe(CADENCE['update_sharpness']),
          up.GradientNoiseProbe(CADENCE['gns']),
          up.LayerTraceProbe(CADENCE['layer_trace']),
          up.ActivationRMSProbe(CADENCE['activation_rms']),
          HistogramProbe(CADENCE['histograms'])]


def measure(config, steps: int = 20, repeats: int = 3) -> dict:
  """Step seconds, and per probe its first and warm call and overhead."""
  from analysis import update_probes as up
  from dynamics.runs import Run
  run = Run(config)
  state = run.init_state()
  batch = jax.tree.map(jnp.asarray, run.dataset.train_batch(0))
  holder = {'state': state}

  def one_step():
    holder['state'], metrics = run.train_step(holder['state'], batch)
    return metrics

  out = {'step_s': pipelined_seconds(one_step, steps)}
  state = holder['state']
  for probe in _probes():
    up._LAST_UPDATE.clear()  # pylint: disable=protected-access
    start = time.perf_counter()
    probe(state, run)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
      up._LAST_UPDATE.clear()  # pylint: disable=protected-access
      start = time.perf_counter()
      probe(state, run)
      times.append(time.perf_counter() - start)
    warm = sorted(times)[len(times) // 2]
    out[probe.name] = {'every': probe.every, 'first_call_s': first,
                       'call_s': warm,
                       'overhead': warm / (probe.every * out['step_s'])}
  return out


def main(argv):
  del argv
  config = cli.config_from_file(_CONFIG.value,
                                'smoke' if _SMOKE.value else None)
  numbers = measure(config, _STEPS.value, _REPEATS.value)
  print(f"training step: {numbers['step_s'] * 1e3:.1f} ms")
  for name, row in numbers.items():
    if isinstance(row, dict):
      print(f"{name:>17}: every {row['every']:>4}, call {row['call_s']:.3f} s "
            f"(first {row['first_call_s']:.2f} s), overhead "
            f"{100 * row['overhead']:.2f}% (goal <= 5%)")
  path = _OUT.value or os.path.join(
      'results', 'bench_probes' + ('.smoke' if _SMOKE.value else '') + '.json')
  record = {'config': _CONFIG.value + (':smoke' if _SMOKE.value else ''),
            'numbers': numbers, 'machine': platform.platform(),
            'devices': str(jax.devices()), 'jax': jax.__version__}
  print(outputs.wrote([path], outputs.write_json(path, record,
                                                 provenance=True)))


if __name__ == '__main__':
  app.run(main)
