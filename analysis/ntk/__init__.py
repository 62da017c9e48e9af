r"""Empirical neural tangent kernels and the lazy-vs-rich diagnostics built on them.

The empirical NTK of a network :math:`f(x; \theta) \in \mathbb{R}^K` is

.. math::
   \Theta(x_1, x_2) = J(x_1)\, J(x_2)^\top, \qquad
   J(x) = \partial f(x; \theta) / \partial \theta \in \mathbb{R}^{K \times P},

summed over *all* parameters. ``empirical_ntk`` returns either the full kernel
(``N1 x N2 x K x K``) or the kernel traced over the outputs,
:math:`\sum_k \Theta_{kk}` (``N1 x N2``). Every non-batch output axis counts as
an output: a transformer's ``(T, V)`` logits give ``K = T V``.

Relation to neural-tangents: its ``trace_axes`` *average* over the traced
axes, ours *sum*: ``ours_traced = K * nt_traced`` (``nt.empirical_ntk_fn(...,
trace_axes=(-1,))``). The full kernels are equal. neural-tangents no longer
imports on current JAX; this package is its replacement here.

Two implementations, equal up to rounding (`kernel`): ``'jacobian'``
(per-example Jacobians, fastest when they fit) and ``'ntvp'`` (NTK-vector
products, no Jacobian stored); ``'auto'`` picks the first with the largest
block that fits the memory limit (`memory.plan`), the second when not even a
few examples' Jacobians do. Models with BatchNorm: pass an inference-mode
``apply_fn`` (``inference_apply_fn`` or `dynamics.runs.Run.apply_fn`), so
that each example's output does not depend on the rest of its batch.

Also here: ``ntk_eigs``, ``kernel_alignment``, ``kernel_distance``,
``relative_param_change`` (`stats`) and ``analyze_checkpoints``
(`checkpoints`), behind the command::

  python -m analysis.ntk --workdir=DIR --steps=0,1000,5000 --num_examples=512

The training-time probe is `analysis.probes.NTKProbe`.
"""

from analysis.ntk.checkpoints import analyze_checkpoints
from analysis.ntk.kernel import empirical_ntk, inference_apply_fn
from analysis.ntk.memory import (METHODS, NTKMemoryError,
                                 default_memory_limit, memory_estimate,
                                 output_size, plan)
from analysis.ntk.stats import (kernel_alignment, kernel_distance,
                                kernel_distance_np, ntk_eigs, probe_examples,
                                relative_param_change)

__all__ = [
    'METHODS', 'NTKMemoryError', 'analyze_checkpoints', 'default_memory_limit',
    'empirical_ntk', 'inference_apply_fn', 'kernel_alignment',
    'kernel_distance', 'kernel_distance_np', 'memory_estimate', 'ntk_eigs',
    'output_size', 'plan', 'probe_examples', 'relative_param_change',
]
