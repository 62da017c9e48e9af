"""Shared test settings: strict rank promotion, quiet orbax, the repo on sys.path."""

import os
import sys

import jax
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
jax.config.update('jax_numpy_rank_promotion', 'raise')
logging.set_verbosity(logging.WARNING)
