"""The reproductions behind every figure and number of the README.

Each module here runs one reproduction, with the same members:

* ``DEFAULT_SEEDS``: the seeds of ``--seeds`` by default (at least three
  where methods are compared);
* ``configs(size) -> {label: config record}``: the configs of its runs, as
  recorded in the results file (`dynamics.runs.config_record`);
* ``run(size, seeds, log) -> dict``: trains and measures through the library
  only (``train_and_evaluate`` / ``Run.train_step``, `dynamics.replay`,
  ``dynamics.optim``, ``analysis.*``) and returns the JSON-able numbers
  (``size`` is 'smoke' or 'full'; ``seeds`` vary the init and the data
  order).

Reading the numbers is the other half, in ``analysis.results.NAME`` (the
notebooks read the committed JSON with it): ``FIGURES`` and ``plot(numbers,
figures_dir)``, ``readme_row(numbers)`` and ``claims(numbers) -> {claim:
bool}`` (the smoke-size tests assert them on a fresh run).

``python -m experiments.reproduce NAME`` runs one and writes
``results/NAME.json`` (see `experiments.reproductions.common`).
"""

# name -> module under experiments.reproductions and analysis.results (one
# small dict, no registry).
REPRODUCTIONS = {
    'edge_of_stability': 'edge_of_stability',
    'river_valley': 'river_valley',
    'lazy_vs_rich': 'lazy_vs_rich',
    'training_jacobian': 'training_jacobian',
    'optimizers_4bit': 'optimizers_4bit',
    'lr_sensitivity': 'lr_sensitivity',
    'mup_coordinate_check': 'mup_coordinate_check',
    'grokking': 'grokking',
    'optimizer_speedups': 'optimizer_speedups',
    'rebasin': 'rebasin',
    'gradient_noise_scale': 'gradient_noise_scale',
    'lmc_spawn': 'lmc_spawn',
    'river_valley_slice': 'river_valley_slice',
}
