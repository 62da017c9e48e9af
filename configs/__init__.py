"""Experiment configs: one ``get_config()`` per file; ``base.py`` declares all fields."""
