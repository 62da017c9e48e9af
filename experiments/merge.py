r"""WSM: merge a constant-rate run's checkpoints into the model for a budget.

  python -m experiments.merge --workdir=runs/wsm [--window=600] [--shape=1-sqrt]

Averages the checkpoints kept every ``--interval`` steps over the last
``--window`` steps before ``--step`` (default: the run's latest checkpoint)
with the weights that emulate a ``--shape`` decay
(``dynamics.merging.merge_weights``). The interval, window and shape default
to the run's own ``merge.interval``, ``merge.window`` and ``merge.shape``.
Writes the merged model as checkpoint ``step`` of ``--output`` (default
``<workdir>/merged/<shape>-w<window>``) and prints its eval loss next to the
raw checkpoint's.

A merge never overwrites a checkpoint and never writes into another run: the
output is a new directory, an earlier merge output of the same run, or the
run itself.
"""

import os

from absl import flags
from absl import logging

from dynamics import cli
from dynamics import decay  # JAX-free: the shape names for --help.


def _check_output(output: str, source: str) -> None:
  """Refuses an output directory that holds another run."""
  from dynamics import runs  # pylint: disable=g-import-not-at-top
  output, source = os.path.abspath(output), os.path.abspath(source)
  if output == source or not runs.holds_run(output):
    return
  if runs.merge_source(output) == source:
    return
  raise cli.UserError(
      f'--output={output} holds another run; a merge writes only into a new '
      f'directory, an earlier merge of {source}, or {source} itself')


def merge_and_evaluate(workdir: str, window: int | None = None,
                       shape: str | None = None, interval: int | None = None,
                       step: int | None = None,
                       output: str | None = None) -> dict:
  """Merges, saves and evaluates; returns the record written to ``merge.json``.

  The run is opened once; the merged checkpoints are read parameters-only.
  The merged model is saved as checkpoint ``step`` of ``output`` with the rest
  of the raw checkpoint's state (optimizer and model state, rng), so it opens
  and resumes like any other checkpoint; ``output`` is a run of its own
  (`dynamics.runs.Run.create`, the source checkpoint as its ``parent``)
  whose metrics hold the merged model's eval. ``window``, ``shape`` and
  ``interval`` default to the run's ``merge.*`` fields.

  Raises:
    ValueError: a window longer than the run or not a multiple of the
      interval, a missing setting (the message names it).
    RunNotFoundError: no run in ``workdir``, or a missing checkpoint.
    FileExistsError: ``output`` already holds a checkpoint at ``step``.
    cli.UserError: ``output`` holds another run.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from dynamics import checkpoint, merging, optim, parts, runs
  from dynamics import workdir as workdir_lib

  run = runs.Run.open(workdir)
  m = run.config.merge
  interval = interval or m.interval
  window = window or m.window
  shape = shape or m.shape
  for name, value in (('interval', interval), ('window', window)):
    if value is None:
      raise ValueError(f'{workdir} has no merge.{name} in its config; pass '
                       f'--{name}')
  step = run.resolve_step(step)
  steps = merging.window_steps(step, window, interval)
  output = os.path.abspath(output or os.path.join(run.workdir, 'merged',
                                                  f'{shape}-w{window}'))
  _check_output(output, run.workdir)
  if step in checkpoint.available_steps(output):
    raise FileExistsError(f'checkpoint {step} already exists in {output}; a '
                          'merge never overwrites one (pass another --output)')
  weights = merging.merge_weights(shape, len(steps))
  params = merging.merge_checkpoints(run, steps, weights)
  raw = run.state(step)
  merged_eval = run.evaluate(params, raw.model_state)
  raw_eval = run.evaluate(parts.eval_params(run.config, raw.opt_state,
                                            raw.params), raw.model_state)
  if optim.OPTIMIZERS[run.config.optimizer.name].eval_params is not None:
    # Schedule-free: the merged evaluation points x, stored with a fresh
    # optimizer state there, whose evaluation point is the merge itself.
    raw = raw.replace(opt_state=run.tx.init(params))
  record = {
      'source': run.workdir, 'step': step, 'shape': shape,
      'window': window, 'interval': interval, 'steps': steps,
      'weights': [float(w) for w in weights],
      'eval_loss': merged_eval['loss'], 'eval_loss_raw': raw_eval['loss'],
  }
  with workdir_lib.open_for_writing(output):  # No concurrent writer.
    checkpoint.save(output, step, raw.replace(params=params),
                    {'position': step})
    if output != run.workdir:  # The source keeps its own config and metrics.
      merged = runs.Run.create(output, run.config,
                               parent={'workdir': run.workdir, 'step': step})
      merged.write_merge(record)
      with merged.metric_writer() as writer:
        writer.write(step, {f'eval_{k}': float(v) for k, v in
                            jax.device_get(merged_eval).items()})
  record['output'] = output
  return record


def define_flags() -> None:
  """The command's flags, defined only when it runs as a command: tests and
  notebooks import ``merge_and_evaluate`` beside other commands' flags."""
  flags.DEFINE_string('workdir', None, 'The constant-rate run.')
  flags.DEFINE_integer('window', None, 'Steps covered by the merge '
                       '(default: the run\'s merge.window).')
  flags.DEFINE_enum('shape', None, list(decay.MERGE_SHAPES),
                    'Emulated decay shape (default: the run\'s merge.shape).')
  flags.DEFINE_integer('interval', None, 'Steps between merged checkpoints '
                       '(default: the run\'s merge.interval).')
  flags.DEFINE_integer('step', None, 'Budget: last merged step '
                       '(default: the latest checkpoint).')
  flags.DEFINE_string('output', None, 'Workdir of the merged model.')


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax is chatty at INFO.
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
  cli.run(main, required=['workdir'])
