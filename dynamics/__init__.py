"""dynamics: a JAX/Flax codebase for studying how neural networks train."""

__version__ = '0.1.0'
