r"""WSM: merge a constant-rate run's checkpoints into the model for a budget.

  python -m experiments.merge --workdir=runs/wsm --window=600 --shape=1-sqrt

Averages the checkpoints kept every ``--interval`` steps (default: the run's
``merge.interval``) over the last ``--window`` steps before ``--step``
(default: the run's latest checkpoint) with the weights that emulate a
``--shape`` decay (``dynamics.merging.merge_weights``), writes the merged model
as checkpoint ``step`` of a new workdir (default
``<workdir>/merged/<shape>-w<window>``; never overwrites) and prints its eval
loss next to the raw checkpoint's.
"""

import json
import os

from absl import flags
from absl import logging

from dynamics import cli


def merge_and_evaluate(workdir: str, window: int, shape: str,
                       interval: int | None = None, step: int | None = None,
                       output: str | None = None) -> dict:
  """Merges, saves and evaluates; returns the record written to ``merge.json``.

  The run is opened once; the merged checkpoints are read parameters-only.
  The merged model is saved as checkpoint ``step`` of ``output`` with the rest
  of the raw checkpoint's state (optimizer and model state, rng), so it opens
  and resumes like any other checkpoint.

  Raises:
    ValueError: a window longer than the run or not a multiple of the
      interval, or a missing checkpoint (the message names the value).
    FileExistsError: ``output`` already holds a checkpoint at ``step``.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from configs import base
  from dynamics import checkpoint, merging, runs

  run = runs.Run.open(workdir, defaults=base.get_config())
  config = run.config
  interval = interval or config.merge.interval
  if interval is None:
    raise ValueError(f'{workdir} has no merge.interval; pass --interval')
  available = run.steps
  if not available:
    raise ValueError(f'no checkpoints in {workdir}')
  step = available[-1] if step is None else step
  steps = merging.window_steps(step, window, interval)
  output = output or os.path.join(workdir, 'merged', f'{shape}-w{window}')
  if step in checkpoint.available_steps(output):
    raise FileExistsError(f'checkpoint {step} already exists in {output}; a '
                          'merge never overwrites one (pass another --output)')
  weights = merging.merge_weights(shape, len(steps))
  params = merging.merge_checkpoints(run, steps, weights)
  raw = run.state(step)
  os.makedirs(output, exist_ok=True)
  checkpoint.save(output, step, raw.replace(params=params), {'position': step})
  merged_eval = run.evaluate(params, raw.model_state)
  raw_eval = run.evaluate(raw.params, raw.model_state)
  record = {
      'source': os.path.abspath(workdir), 'step': step, 'shape': shape,
      'window': window, 'interval': interval, 'steps': steps,
      'weights': [float(w) for w in weights],
      'eval_loss': merged_eval['loss'], 'eval_loss_raw': raw_eval['loss'],
  }
  with open(os.path.join(output, 'merge.json'), 'w') as f:
    json.dump(record, f, indent=2)
  runs.write_config(config, output)
  with open(os.path.join(output, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': step, **{f'eval_{k}': float(v) for k, v in
                                         jax.device_get(merged_eval).items()}})
            + '\n')
  record['output'] = os.path.abspath(output)
  return record


def define_flags() -> None:
  """The command's flags, defined only when it runs as a command: tests and
  notebooks import ``merge_and_evaluate`` beside other commands' flags."""
  flags.DEFINE_string('workdir', None, 'The constant-rate run.')
  flags.DEFINE_integer('window', None, 'Steps covered by the merge.')
  flags.DEFINE_enum('shape', 'linear', ['uniform', 'linear', 'cosine', '1-sqrt'],
                    'Emulated decay shape.')
  flags.DEFINE_integer('interval', None, 'Steps between merged checkpoints '
                       '(default: config.merge.interval).')
  flags.DEFINE_integer('step', None, 'Budget: last merged step '
                       '(default: the latest checkpoint).')
  flags.DEFINE_string('output', None, 'Workdir of the merged model.')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
  f = flags.FLAGS
  try:
    r = merge_and_evaluate(f.workdir, f.window, f.shape, f.interval, f.step,
                           f.output)
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  print(f"Merged {len(r['steps'])} checkpoints of {r['source']} (steps "
        f"{r['steps'][0]}..{r['steps'][-1]}, {r['shape']} weights) into "
        f"{r['output']} at step {r['step']}.\n"
        f"  eval loss: merged {r['eval_loss']:.4f}, raw checkpoint "
        f"{r['eval_loss_raw']:.4f}")


if __name__ == '__main__':
  define_flags()
  cli.run(main, required=['workdir', 'window'])
