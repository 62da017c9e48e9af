"""The record of the README's first command (`experiments.main_record`)."""

from configs import wsd
from dynamics import summary


def test_summarize_reads_the_stable_end_and_the_final_eval_loss():
  config = wsd.get_config()  # 2000 steps, the last 20% decay: 1600 on.
  metrics = [{'step': 0, 'eval_loss': 4.16}, {'step': 20, 'train_loss': 4.0},
             {'step': 1500, 'eval_loss': 2.74}, {'step': 1600, 'eval_loss': 2.73},
             {'step': 1700, 'eval_loss': 2.71}, {'step': 2000, 'eval_loss': 2.69}]
  out = summary.main_record(metrics, config, 2.675, 123.0)
  assert out == {'entropy_rate_nats': 2.675, 'stable_end_step': 1600,
                 'eval_loss_stable_end': 2.73, 'final_step': 2000,
                 'eval_loss_final': 2.69, 'decay_fraction': 0.2,
                 'num_steps': 2000, 'wall_seconds': 123.0}
