"""The reproductions behind every figure and number of the README.

Each module here is one reproduction, with the same members:

* ``FIGURES``: the file names it draws under ``docs/figures/``;
* ``DEFAULT_SEEDS``: the seeds of ``--seeds`` by default (at least three
  where methods are compared);
* ``configs(size) -> {label: config record}``: the configs of its runs, as
  recorded in the results file (`common.config_record`);
* ``run(size, seeds, log) -> dict``: trains and measures through the library
  only (``train_and_evaluate`` / ``Run.train_step``, ``dynamics.optim``,
  ``analysis.*``) and returns the JSON-able numbers (``size`` is 'smoke' or
  'full'; ``seeds`` vary the init and the data order);
* ``plot(numbers, figures_dir) -> list of paths``: the figures, drawn from the
  numbers alone (notebooks call it on the committed JSON);
* ``readme_row(numbers) -> str``: the README's table row (a Markdown table
  line), every number in it formatted from ``numbers``;
* ``claims(numbers) -> {claim: bool}``: the paper's claims, checked on the
  numbers (the smoke-size tests assert them on a fresh run).

``python -m experiments.reproduce NAME`` runs one and writes
``results/NAME.json`` (see `experiments.reproductions.common`).
"""

# name -> module under experiments.reproductions (one small dict, no registry).
REPRODUCTIONS = {
    'edge_of_stability': 'edge_of_stability',
    'river_valley': 'river_valley',
    'lazy_vs_rich': 'lazy_vs_rich',
    'training_jacobian': 'training_jacobian',
    'optimizers_4bit': 'optimizers_4bit',
    'lr_sensitivity': 'lr_sensitivity',
    'mup_coordinate_check': 'mup_coordinate_check',
    'grokking': 'grokking',
}
