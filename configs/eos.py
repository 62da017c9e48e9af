"""Full-batch gradient descent at the edge of stability (Cohen et al., 2021).

Command:
  python -m experiments.main --config=configs/eos.py --workdir=runs/eos

What you should see (2 CPU cores, about 30 s): a 16-64-64-1 tanh MLP
(5,313 parameters) fits 256 noisy teacher-student examples with MSE by
full-batch gradient descent at learning rate 0.2. ``metrics.jsonl`` logs
``sharpness`` (the top Hessian eigenvalue of the training loss, every 10 steps,
warm-started Lanczos, 3-10 HVPs each): it starts at 5.0, rises
(progressive sharpening), overshoots to ~12.8 around step 150, then hovers at
2/eta = 10 (9.5-10.4) from step 300 on, while the training loss keeps falling,
non-monotonically, to ~1e-4. Try ``--config.optimizer.learning_rate=
0.1`` (hovers at 20) or ``0.3`` (6.7); unnormalized SAM with
``--config.optimizer.sam.rho=0.02 --config.optimizer.sam.normalize=False``
settles lower, where eta * lambda * (1 + rho * lambda) = 2.
``python -m experiments.reproduce edge_of_stability`` runs three rates, SAM
and small-batch SGD over three seeds (``results/edge_of_stability.json``, the
figures of ``analysis/notebooks/edge_of_stability.ipynb``).

Smoke variant (seconds, for tests): ``--config=configs/eos.py:smoke``.

References:
  Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability" (ICLR 2021).
"""

import ml_collections

from configs import base


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.update(
      name='eos', num_steps=1500, log_every=10, eval_every=250, eval_batches=1)
  c.model.update(
      name='mlp', hidden_sizes=(64, 64), activation='tanh', norm='none')
  # noise_std: Label noise: fitting it needs sharpening.
  # batch_size: = num_train: full-batch gradient descent.
  c.data.update(
      name='teacher_student', input_dim=16, teacher_width=32, output_dim=1,
      noise_std=1.0, num_train=256, batch_size=256)
  c.loss.name = 'mse'
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.2    # 2 / eta = 10.
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = 0
  # sharpness_data: The training loss is what sits at 2/eta.
  c.analysis.update(
      sharpness_every=10, sharpness_iters=20, sharpness_batches=1,
      sharpness_data='train')
  c.checkpoint.every_steps = 500
  return base.apply_variants(c, arg, {'smoke': smoke}, 'configs/eos.py')


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks the config so the real code path runs in seconds."""
  base.smoke(c, num_steps=30, log_every=5, eval_every=15,
             checkpoint_every=10)
  c.data.num_train = 32
  c.data.batch_size = 32
  c.model.hidden_sizes = (16, 16)
  c.analysis.sharpness_every = 5
  c.analysis.sharpness_iters = 10
  return c
