r"""Merge a run's checkpoints: WSM, model soups, Fisher-weighted averaging.

  python -m experiments.merge --workdir=runs/wsm [--window=600] [--shape=1-sqrt]
  python -m experiments.merge --workdir=runs/wsm --method=greedy_soup \
      [--others=runs/wsm_seed1,runs/wsm_seed2]

``--method`` (default ``wsm``):

* ``wsm``: the decay-emulating weights below (`dynamics.merging`).
* ``uniform_soup``: the plain average of the ingredients; ``greedy_soup``:
  Wortsman et al.'s greedy recipe (an ingredient is kept only if the held-out
  loss of the average does not rise; held-out = the run's probe batches,
  disjoint from the eval batches the printed loss uses); ``fisher``: Matena &
  Raffel's Fisher-weighted average with each ingredient's diagonal Fisher
  (`analysis.landscape.soups`). Their ingredients are the window's
  checkpoints plus the latest checkpoint of each run in ``--others`` (same
  architecture).

Averages the checkpoints kept every ``--interval`` steps over the last
``--window`` steps before ``--step`` (default: the run's latest checkpoint)
with the weights that emulate a ``--shape`` decay
(``dynamics.merging.merge_weights``). The interval, window and shape default
to the run's own ``merge.interval``, ``merge.window`` and ``merge.shape``.
Writes the merged model as checkpoint ``step`` of ``--output`` (default
``<workdir>/merged/<shape>-w<window>-step<step>``) and prints its eval loss next to the
raw checkpoint's.

A merge never overwrites a checkpoint and never writes into another run: the
output is a new directory (or an earlier merge of the same run at the same
step, which refuses to overwrite its checkpoint). One output holds one merge,
so its ``merge.json`` and metrics always describe it.
"""

import os

from absl import flags
from absl import logging

from dynamics import cli
from dynamics import decay  # JAX-free: the shape names for --help.


def _check_output(output: str, source: str, step: int) -> None:
  """Refuses an output directory that holds another run, the source run
  itself, or a merge of another step (one merge per output: its
  ``merge.json`` and metrics describe that one)."""
  # pylint: disable=g-import-not-at-top
  from dynamics import checkpoint, runs
  output, source = os.path.abspath(output), os.path.abspath(source)
  if output == source:
    raise cli.UserError(f'--output={output} is the run being merged; a merge '
                        'writes into a directory of its own (pass another '
                        '--output)')
  if not runs.holds_run(output):
    return
  if runs.merge_source(output) != source:
    raise cli.UserError(
        f'--output={output} holds another run; a merge writes only into a new '
        f'directory or an earlier merge of {source} at the same step')
  steps = checkpoint.available_steps(output)
  if steps and step not in steps:
    raise cli.UserError(
        f'--output={output} holds the merge at step {steps[-1]}; an output '
        f'holds one merge, so a merge at step {step} needs another --output')


METHODS = ('wsm', 'uniform_soup', 'greedy_soup', 'fisher')


def _ingredients(run, steps, others):
  """``[(run, step), ...]``: the window's checkpoints, then each other run's
  latest (its shapes checked against ``run``'s)."""
  from analysis.landscape import interpolation  # pylint: disable=g-import-not-at-top
  from dynamics import runs  # pylint: disable=g-import-not-at-top
  out = [(run, s) for s in steps]
  for workdir in others or ():
    other = runs.Run.open(workdir)
    interpolation.check_same_shapes(run.abstract_state.params,
                                    other.abstract_state.params, 'others')
    out.append((other, other.resolve_step(None)))
  return out


def _soup(method, run, steps, others, model_state):
  """The merged parameters and what to record of a soup or Fisher merge."""
  # pylint: disable=g-import-not-at-top
  from analysis.landscape import soups
  ingredients = _ingredients(run, steps, others)
  params = [r.params(s) for r, s in ingredients]
  info = {'ingredients': [{'workdir': r.workdir, 'step': s}
                          for r, s in ingredients]}
  if method == 'uniform_soup':
    return soups.uniform_soup(params), info
  if method == 'greedy_soup':
    held_out = run.probe_batches(run.config.eval_batches)
    loss = lambda p: sum(float(run.eval_step(p, model_state, b)['loss'])
                         for b in held_out) / len(held_out)
    merged, kept, scores = soups.greedy_soup(params, loss)
    return merged, {**info, 'kept': kept, 'held_out_loss': scores}
  fishers = [soups.diagonal_fisher(r, s) for r, s in ingredients]
  return soups.fisher_merge(params, fishers), info


def merge_and_evaluate(workdir: str, window: int | None = None,
                       shape: str | None = None, interval: int | None = None,
                       step: int | None = None,
                       output: str | None = None, method: str = 'wsm',
                       others: list | None = None) -> dict:
  """Merges, saves and evaluates; returns the record written to ``merge.json``.

  The run is opened once; the merged checkpoints are read parameters-only.
  The merged model is saved as checkpoint ``step`` of ``output`` with the rest
  of the raw checkpoint's state (optimizer and model state, rng), so it opens
  and resumes like any other checkpoint; ``output`` is a run of its own
  (`dynamics.runs.Run.create`, the source checkpoint as its ``parent``)
  whose metrics hold the merged model's eval. ``window``, ``shape`` and
  ``interval`` default to the run's ``merge.*`` fields. ``method`` (a name
  of `METHODS`) picks the weights; ``others`` adds other runs' latest
  checkpoints to a soup's or Fisher merge's ingredients.

  Raises:
    ValueError: a window longer than the run or not a multiple of the
      interval, a missing setting (the message names it).
    RunNotFoundError: no run in ``workdir``, or a missing checkpoint.
    FileExistsError: ``output`` already holds a checkpoint at ``step``.
    cli.UserError: ``output`` holds another run.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from dynamics import checkpoint, merging, optim, outputs, parts, runs
  from dynamics import workdir as workdir_lib

  if method not in METHODS:
    raise ValueError(f'--method={method}: must be one of {", ".join(METHODS)}')
  if others and method == 'wsm':
    raise ValueError('--others: only soups and Fisher merges take other runs')
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
  name = shape if method == 'wsm' else method
  default_output = output is None
  output = os.path.abspath(output or os.path.join(
      run.workdir, 'merged', f'{name}-w{window}-step{step}'))
  _check_output(output, run.workdir, step)
  outputs.check_writable(output, '--output', default=default_output)
  if step in checkpoint.available_steps(output):
    raise FileExistsError(f'checkpoint {step} already exists in {output}; a '
                          'merge never overwrites one (pass another --output)')
  raw = run.state(step)
  extra = {}
  if method == 'wsm':
    weights = merging.merge_weights(shape, len(steps))
    params = merging.merge_checkpoints(run, steps, weights)
    extra['weights'] = [float(w) for w in weights]
  else:
    params, extra = _soup(method, run, steps, others, raw.model_state)
  merged_eval = run.evaluate(params, raw.model_state)
  raw_eval = run.evaluate(parts.eval_params(run.config, raw.opt_state,
                                            raw.params), raw.model_state)
  if optim.OPTIMIZERS[run.config.optimizer.name].eval_params is not None:
    # Schedule-free: the merged evaluation points x, stored with a fresh
    # optimizer state there, whose evaluation point is the merge itself.
    raw = raw.replace(opt_state=run.tx.init(params))
  record = {
      'source': run.workdir, 'step': step, 'method': method,
      'shape': shape if method == 'wsm' else None,
      'window': window, 'interval': interval, 'steps': steps, **extra,
      'eval_loss': merged_eval['loss'], 'eval_loss_raw': raw_eval['loss'],
  }
  with workdir_lib.open_for_writing(output):  # No concurrent writer.
    checkpoint.save(output, step, raw.replace(params=params),
                    {'position': step})
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
  flags.DEFINE_enum('method', 'wsm', list(METHODS),
                    'wsm (decay-emulating weights), uniform_soup, '
                    'greedy_soup or fisher.')
  flags.DEFINE_list('others', [], 'Soups and Fisher: other runs whose latest '
                    'checkpoints join the ingredients.')


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax is chatty at INFO.
  f = flags.FLAGS
  try:
    r = merge_and_evaluate(f.workdir, f.window, f.shape, f.interval, f.step,
                           f.output, f.method, f.others)
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  how = (f"{r['shape']} weights" if r['method'] == 'wsm' else
         f"{r['method']}, {len(r['ingredients'])} ingredients")
  print(f"Merged {len(r['steps'])} checkpoints of {r['source']} (steps "
        f"{r['steps'][0]}..{r['steps'][-1]}, {how}) into "
        f"{r['output']} at step {r['step']}.\n"
        f"  eval loss: merged {r['eval_loss']:.4f}, raw checkpoint "
        f"{r['eval_loss_raw']:.4f}")


if __name__ == '__main__':
  define_flags()
  cli.run(main, required=['workdir'])
