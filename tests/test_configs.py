"""Every shipped experiment config validates, documents its command, and
trains its smoke variant end to end through the real loop."""

import importlib
import json
import math
import os

import pytest

from dynamics import config_lib, train

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
EXPERIMENTS = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                     if f.endswith('.py') and f not in ('__init__.py', 'base.py'))
# Smoke variants trained here; the others run in their own module's tests
# (wsd: test_e2e; eos: test_hessian; river_valley, lr_sensitivity,
# lazy_rich, jacobian: their notebooks' and commands' tests; llama_c4,
# gpt2_owt: test_llama, on token files).
TRAINED_HERE = ('adamp', 'sam', 'stable_spam', 'grokking', 'stable_spam_4bit')


def _module(name):
  return importlib.import_module(f'configs.{name}')


@pytest.fixture(scope='module')
def token_dir(tmp_path_factory):
  """Token shards for the configs that read them (``--config.data.path``)."""
  from dynamics import data
  from experiments import prepare_text
  out = str(tmp_path_factory.mktemp('tokens') / 'stdlib_json')
  prepare_text.prepare(prepare_text.input_files(
      os.path.join(data.default_text_dir(), 'json')), out, 'bytes',
                       eval_tokens=2000, progress=False)
  return out


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_config_validates_and_opens_with_its_command(name, token_dir):
  module = _module(name)
  doc = module.__doc__ or ''
  opening = '\n'.join(doc.splitlines()[:15])
  assert 'python -m ' in opening, \
      f'configs/{name}.py: the docstring must open with the exact command'
  for arg in (None, 'smoke'):
    config = module.get_config(arg)
    if config.data.name == 'tokens':
      config.data.path = token_dir
    config_lib.validate(config)


@pytest.mark.parametrize('name', TRAINED_HERE)
def test_smoke_variant_trains(name, tmp_path):
  config = _module(name).get_config('smoke')
  config.checkpoint.async_save = False
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == config.num_steps
  with open(tmp_path / 'metrics.jsonl') as f:
    last = [json.loads(line) for line in f][-1]
  assert last['step'] == config.num_steps
  assert math.isfinite(last['train_loss']) and math.isfinite(last['eval_loss'])
