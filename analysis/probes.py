"""Training-time analysis callbacks, built from config.

``train_and_evaluate(config, workdir, callbacks=from_config(config))`` logs
what ``config.analysis`` asks for (sharpness, Hessian trace, NTK statistics)
into ``metrics.jsonl``; ``experiments/main.py`` does exactly that. The
callbacks live here, in ``analysis/``, because ``dynamics/`` never imports
the analysis code.
"""

from typing import Any, List

import ml_collections


def from_config(config: ml_collections.ConfigDict) -> List[Any]:
  """The callbacks ``config.analysis`` enables (empty when all are off)."""
  callbacks = []
  a = config.analysis
  if a.sharpness_every is not None or a.trace_every is not None:
    from analysis import hessian
    callbacks.append(hessian.SharpnessProbe(config))
  if a.ntk_every is not None:
    from analysis import ntk
    callbacks.append(ntk.NTKProbe(config))
  return callbacks
