"""Probes: measurements the training loop takes every few steps.

``train_and_evaluate(config, workdir, probes=[...])`` calls each probe at the
steps that are multiples of its ``every`` (step 0 included) and logs what it
returns into ``metrics.jsonl``; what a probe carries from one call to the
next is saved with each checkpoint under the probe's ``name``, so a resumed
run continues the same series as an uninterrupted one -- whichever probes
are added or removed at the resume. The probes themselves (sharpness, NTK)
are built in `analysis.probes`, which ``dynamics`` never imports.

A probe subclasses `Probe` (for the defaults of a probe without state) or
implements all of it::

  class LossOnBatch(Probe):
    name, every = 'loss_on_batch', 100
    def __call__(self, state, run):
      return {'loss_on_batch': float(run.loss_fn(state.model_state)(
          state.params, run.probe_batches(1)[0]))}
"""

import re
from typing import Any, Dict, Mapping, Protocol, Sequence


class Probe(Protocol):
  """What the training loop expects of a probe.

  Attributes:
    name: the key of its state in checkpoints: stable across runs and
      resumes, unique among the probes of a run.
    every: the loop calls it at the steps that are multiples of this.
  """
  name: str
  every: int

  def __call__(self, state: Any, run: Any) -> Mapping[str, float]:
    """``{metric: value}`` at ``state`` (a `dynamics.step.TrainState` after
    ``state.step`` updates) of ``run`` (the `dynamics.runs.Run` trained).
    A value is a float, or a `dynamics.histograms.Histogram` (kept in the
    run's histogram file and shown by TensorBoard as a histogram)."""

  def state_dict(self) -> Dict[str, Any]:
    """What the probe carries to its next call (arrays and numbers), saved
    with each checkpoint; ``{}``: nothing."""
    return {}

  def load_state_dict(self, saved: Mapping[str, Any]) -> None:
    """On resume, what `state_dict` returned when the checkpoint was saved
    (not called when the checkpoint holds nothing under the probe's name)."""
    del saved


def check(probes: Sequence[Probe]) -> None:
  """Raises a ValueError naming a probe whose ``every`` is not a positive
  integer, or two probes that share a name (their states would collide)."""
  seen = {}
  for p in probes:
    if not isinstance(p.every, int) or isinstance(p.every, bool) or p.every < 1:
      raise ValueError(f'probe {p.name!r}: every must be a positive integer, '
                       f'got {p.every!r}')
    if p.name in seen:
      raise ValueError(
          f'two probes are named {p.name!r} ({type(seen[p.name]).__name__} '
          f'and {type(p).__name__}): give each a name of its own')
    seen[p.name] = p


def states(probes: Sequence[Probe]) -> Dict[str, Dict[str, Any]]:
  """``{name: state_dict}`` of the probes that carry something."""
  return {p.name: s for p in probes if (s := p.state_dict())}


def restore(probes: Sequence[Probe], saved: Mapping[str, Any]) -> None:
  """Gives each probe the state a checkpoint saved under its name.

  Checkpoints written before probes had names keyed their states by
  position (``'<i>_<Class>'``); there a probe gets the state of its class
  when exactly one such key names the class. A probe that finds nothing
  starts afresh (see its documentation for what that means for its series).
  """
  for p in probes:
    state = saved.get(p.name)
    if state is None:
      legacy = [k for k in saved
                if re.fullmatch(rf'\d+_{re.escape(type(p).__name__)}', k)]
      state = saved[legacy[0]] if len(legacy) == 1 else None
    if state is not None:
      p.load_state_dict(state)
