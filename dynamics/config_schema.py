"""Every configuration field of the project, with its default (JAX-free).

The one declaration of the config's fields: ``configs/base.py`` (and through
it every experiment config) starts from :func:`defaults`, and
``dynamics.runs.Run.open`` fills in, from the same declaration, the fields that
a run recorded by an older version lacks. A field set to ``None`` is "off".
The config is locked: a field not declared here cannot be set, neither by an
experiment config nor from the command line
(``--config.optimizer.learning_rate=1e-3``), and ml_collections rejects a
value of the wrong type, naming the field.

Each optimizer's own hyperparameters are its section ``optimizer.<name>``
(the name in ``dynamics.optim.OPTIMIZERS``). Their flat names of before the
sections (``optimizer.b2``, ...) are accepted for one release:
``dynamics.config_migrate`` moves them into the selected optimizer's section
and converts a run record of before the sections.

This module imports nothing but ml_collections (and the plain-Python
``dynamics.errors``), so that configs and ``--help`` load without JAX.
"""

from typing import Any, Dict, Mapping

import ml_collections
from ml_collections.config_dict import placeholder

from dynamics.errors import ConfigError  # noqa: F401  (config files raise it)


def _adam_moments() -> ml_collections.ConfigDict:
  """The fields an Adam-type optimizer's section starts with."""
  a = ml_collections.ConfigDict()
  a.b1 = 0.9                       # First-moment decay.
  a.b2 = 0.95                      # Second-moment decay.
  a.eps = 1e-8                     # Epsilon added to sqrt(v).
  return a


def defaults() -> ml_collections.ConfigDict:
  """Every field with its default, locked."""
  c = ml_collections.ConfigDict()
  c.name = 'base'                  # Experiment name; default workdir is runs/<name>.
  c.seed = 0                       # Seeds init, data order and per-step rngs.
  c.num_steps = 1000               # Total optimizer steps of the run.
  c.log_every = 20                 # Steps between metric lines in metrics.jsonl.
  c.eval_every = 200               # Steps between evaluations (and at the end).
  c.eval_batches = 4               # Held-out batches per evaluation.
  c.log_per_layer = False          # Also log per-layer norms and stability probes.
  c.progress = True                # Show a tqdm progress bar.
  c.stop_on_nonfinite = True       # Stop with an error on the first NaN/Inf metric.
  c.distributed = False            # Call jax.distributed.initialize() at start.

  # Model. Sizes of the data (vocab, outputs) are filled in from the dataset.
  c.model = m = ml_collections.ConfigDict()
  m.name = 'transformer'           # transformer | mlp | cnn | resnet
  m.d_model = 64                   # Transformer width.
  m.num_layers = 2                 # Transformer blocks.
  m.num_heads = 4                  # Attention heads.
  m.mlp_ratio = 4                  # Transformer MLP hidden = mlp_ratio * d_model.
  m.max_len = 128                  # Maximum sequence length (learned positions).
  m.tie_embeddings = True          # Share input embedding and output head.
  m.dropout = 0.0                  # Dropout rate (uses the per-step rng).
  m.hidden_sizes = (64, 64)        # MLP hidden widths.
  m.channels = (16, 32)            # CNN channels per conv layer / ResNet stage widths.
  m.blocks_per_stage = 1           # ResNet basic blocks per stage.
  m.activation = 'gelu'            # gelu | relu | tanh | silu
  m.norm = 'layernorm'             # layernorm | rmsnorm | batchnorm | none | dyt
  m.norm_position = 'pre'          # pre | post | peri | mix | deepnorm
  m.mix_ln_split = placeholder(int) # Mix-LN: number of leading Post-LN blocks (None: num_layers // 4).
  m.qk_norm = False                # Normalize queries and keys (transformer only).
  m.layernorm_scaling = False      # Scale each norm output by 1/sqrt(depth).
  m.init = 'default'               # default | lecun | he | orthogonal | fixup | zero
  m.init_scale = 1.0               # Multiplier on the initialization's std.
  m.parametrization = 'standard'   # standard | ntk | mup
  m.base_width = placeholder(int)  # muP reference width (required for mup).
  m.output_scale = 1.0             # alpha multiplying the model output (lazy vs rich).
  m.antisymmetric_init = False     # MLP: paired last-layer units, opposite readouts: output 0 at init (lazy training).
  m.quantization = placeholder(str) # None | int4 | fp4 (fake-quantized training).
  m.softmax = 'softmax'            # softmax | stablemax (output nonlinearity in the loss).
  m.dtype = 'float32'              # Compute dtype: float32 | bfloat16.
  m.param_dtype = 'float32'        # Parameters (and so the optimizer state): float32 | bfloat16 (GaLore's recipe).
  m.attention_impl = placeholder(str) # None (XLA picks) | xla | cudnn.
  m.position = 'learned'           # learned (GPT-2 table of max_len rows) | rope (rotary, LLaMA).
  m.rope_theta = 10_000.0          # RoPE base period theta.
  m.mlp = 'gelu'                   # gelu (fc_out(activation(fc_in x))) | swiglu (LLaMA's gated MLP, silu).
  m.mlp_hidden = placeholder(int)  # MLP hidden size (None: mlp_ratio * d_model; swiglu: 8d/3 rounded up to 256).
  m.use_bias = True                # Biases in the transformer's linear layers and LayerNorms (LLaMA: False).
  m.vocab_size = placeholder(int)  # Embedding rows (None: the data's vocabulary; larger pads it, e.g. 50,304).
  m.remat = 'none'                 # none | full | dots: rematerialize each block (dots keeps matmul outputs).

  # Data. All defaults need no network.
  c.data = d = ml_collections.ConfigDict()
  d.name = 'markov'                # markov | bytes | tokens | teacher_student | modular | digits | tfds | huggingface
  d.batch_size = 32                # Global batch size.
  d.seq_len = 64                   # Tokens per sequence (language data).
  d.vocab_size = 64                # Markov language: number of states.
  d.temperature = 0.5              # Markov language: lower -> lower transition entropy.
  d.text_dir = placeholder(str)    # bytes: directory of text files (None: Python's stdlib source).
  d.max_bytes = 4_000_000          # bytes: read at most this many bytes.
  d.input_dim = 16                 # teacher_student: input dimension.
  d.teacher_width = 32             # teacher_student: teacher hidden width.
  d.output_dim = 1                 # teacher_student: outputs.
  d.noise_std = 0.0                # teacher_student: label noise.
  d.num_train = 1024               # teacher_student: training set size (eval set same size).
  d.modulus = 97                   # modular: p.
  d.operation = 'add'              # modular: add | sub | mul | div
  d.train_fraction = 0.4           # modular: fraction of all pairs used for training.
  d.white_noise = False            # digits: replace images by white noise of the same shape.
  d.num_eval = placeholder(int)    # digits: held-out images (None: 20%, i.e. 360 of 1,797).
  d.hf_name = placeholder(str)     # huggingface / tfds: dataset name (optional [data] extra).
  d.path = placeholder(str)        # tokens: directory of token shards (python -m experiments.prepare_text).
  d.packing = 'concat'             # tokens: concat (windows across documents) | truncate (one padded document per example, padding masked).

  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'auto'             # auto (from the dataset) | cross_entropy | mse
  c.loss.z_loss = 0.0              # Coefficient of the log^2 Z auxiliary loss.
  c.loss.vocab_chunk = placeholder(int) # Cross-entropy by vocabulary chunks of this many columns: no [batch x seq x vocab] logits (None: plain).

  # Optimizer (dynamics/optim). The fields every optimizer shares are flat;
  # each optimizer's own hyperparameters are its section optimizer.<name>,
  # read only when it is selected (sgd has none). The section of the
  # momentum optimizer is optimizer.momentum: its coefficient is
  # optimizer.momentum.momentum (sgdp's is optimizer.sgdp.momentum).
  c.optimizer = o = ml_collections.ConfigDict()
  o.name = 'adamw'                 # A key of dynamics.optim.OPTIMIZERS (each has its section below).
  o.learning_rate = 3e-3           # Peak learning rate (the schedule scales it).
  o.weight_decay = 0.0             # Weight decay (decoupled; sgd, momentum, adam: coupled L2).
  o.weight_decay_mask = 'matrices' # all | matrices (ndim >= 2 only)
  o.clip_norm = placeholder(float) # Global-norm gradient clipping threshold.
  o.lr_multipliers = None          # Set by parametrizations (muP); leave None.
  o.orthograd = False              # ⊥Grad: drop the gradient's component along each weight.
  o.grad_accum_steps = 1           # Micro-batches per update (gradient accumulation, memory of one).
  o.sam = s = ml_collections.ConfigDict()
  s.rho = placeholder(float)       # SAM radius (None: plain gradients).
  s.adaptive = False               # ASAM: element-wise adaptive perturbation.
  s.eta = 0.01                     # ASAM: the eta in |w| + eta (0.01: the official code's default).
  s.all_leaves = False             # ASAM: scale every leaf (default: kernels, embeddings, norm scales; biases T_w=1, as the official code).
  s.normalize = True               # False: unnormalized SAM, eps = rho * grad (Andriushchenko & Flammarion 2022).
  s.mask = 'all'                   # all | norm (SAM-ON: only normalization parameters)
  s.num_microbatches = 1           # m-sharpness: perturb per micro-batch.

  o.momentum = om = ml_collections.ConfigDict()  # SGD with heavy-ball momentum.
  om.momentum = 0.9                # Momentum coefficient.
  om.nesterov = False              # Nesterov momentum.
  o.adam = _adam_moments()         # Adam (coupled L2 weight decay).
  o.adamw = _adam_moments()        # AdamW (decoupled weight decay).
  o.adamp = ap = _adam_moments()   # AdamP (Heo et al., 2021).
  ap.nesterov = False              # The reference's Nesterov direction.
  ap.delta = 0.1                   # Cosine threshold below which the update is projected.
  ap.wd_ratio = 0.1                # Weight-decay ratio when projecting.
  o.sgdp = sp = ml_collections.ConfigDict()  # SGDP (Heo et al., 2021).
  sp.momentum = 0.9                # Momentum coefficient.
  sp.dampening = 0.0               # Dampening, in [0, 1].
  sp.nesterov = False              # Nesterov momentum.
  sp.eps = 1e-8                    # Epsilon of the cosine similarity.
  sp.delta = 0.1                   # Cosine threshold below which the update is projected.
  sp.wd_ratio = 0.1                # Weight-decay ratio when projecting.
  o.stable_spam = ss = _adam_moments()  # Stable-SPAM (Huang et al., 2025).
  ss.gamma1 = 0.7                  # AdaGN first-moment decay.
  ss.gamma2 = 0.9                  # AdaGN second-moment decay.
  ss.theta = 0.999                 # AdaClip threshold decay.
  ss.reset_interval = 1000         # Momentum reset period.
  ss.beta1_decay_steps = placeholder(int) # Steps over which b1 (and gamma1) decay (None: off).
  ss.beta1_decay_min = 0.5         # Final factor of that decay, in [0, 1].
  o.soap = so = _adam_moments()    # SOAP (Vyas et al., 2024): Adam in Shampoo's eigenbasis.
  so.b1 = 0.95                     # First-moment decay (the reference's default).
  so.shampoo_beta = placeholder(float) # Decay of Shampoo's factors L, R (None: b2).
  so.precondition_frequency = 10   # Refresh the eigenbases (power iteration + QR) every this many steps.
  so.max_precond_dim = 10000       # Axes longer than this get no preconditioner (identity basis).
  so.merge_dims = False            # Merge adjacent axes while their product <= max_precond_dim.
  so.precondition_1d = False       # Precondition vectors too (one full factor).
  so.normalize_grads = False       # Divide each leaf's step direction by its RMS.
  so.correct_bias = True           # Adam's bias correction.
  # Deprecated for one release: the flat names the fields above had before
  # each optimizer had its section (optimizer.b1, optimizer.gamma1, ...), as
  # "unset" placeholders. Set, `resolve_deprecated` moves each into the
  # selected optimizer's section with a one-line notice, before validation.
  # optimizer.momentum is the momentum optimizer's section now, so a number
  # there is accepted on the command line (dynamics.cli) and in old run
  # records (`migrate_flat_fields`), not in a config file.
  for name, kind in _flat_fields(o).items():
    if name not in o:
      o[name] = placeholder(kind)
  # Today's optimizers by their optax names (dynamics/optim/catalog.py):
  # after the loop above, so they add no deprecated flat names.
  o.nadamw = _adam_moments()       # NAdamW (optax.nadamw).
  o.lion = li = ml_collections.ConfigDict()  # Lion (optax.lion).
  li.b1 = 0.9                      # Interpolation of momentum and gradient (the sign's argument).
  li.b2 = 0.99                     # Momentum decay.
  o.adafactor = af = ml_collections.ConfigDict()  # Adafactor (optax.adafactor).
  af.decay_rate = 0.8              # Second-moment decay 1 - (t + 1)^-decay_rate.
  af.decay_offset = 0              # Step offset of that decay.
  af.min_dim_size_to_factor = 128  # Factor the second moment of leaves with both last dims >= this.
  af.factored = True               # Factor the second moment (False: full, as RMSProp).
  af.multiply_by_parameter_scale = True # Scale steps by each leaf's RMS.
  af.clipping_threshold = ml_collections.FieldReference(1.0, float) # Update RMS clipping per leaf (None: off).
  af.momentum = placeholder(float) # First-moment decay (None: none, as the paper).
  af.eps = 1e-30                   # Added to the squared gradient.
  o.muon = mu = ml_collections.ConfigDict()  # Muon (optax.contrib.muon).
  mu.beta = 0.95                   # Momentum decay.
  mu.ns_steps = 5                  # Newton-Schulz iterations.
  mu.nesterov = True               # Nesterov momentum.
  mu.eps = 1e-8                    # Epsilon of the normalization (and of the AdamW fallback).
  mu.adam_params = r'(embed|pos_embed|head)(/.*)?' # Regex of 2-D leaves left to AdamW (embeddings, head).
  mu.adam_b1 = 0.9                 # AdamW fallback's first-moment decay.
  mu.adam_b2 = 0.999               # AdamW fallback's second-moment decay.
  mu.adam_weight_decay = 0.0       # AdamW fallback's decay (every fallback leaf; optax has no mask).
  mu.consistent_rms = placeholder(float) # Consistent-RMS scale (e.g. 0.2; None: width scaling).
  o.schedule_free_adamw = sf = ml_collections.ConfigDict()  # Schedule-free AdamW (optax.contrib).
  sf.b1 = 0.9                      # Interpolation y = b1 x + (1 - b1) z, in (0, 1).
  sf.b2 = 0.999                    # Second-moment decay.
  sf.eps = 1e-8                    # Epsilon added to sqrt(v).
  sf.weight_lr_power = 2.0         # Averaging weight max_lr^power.
  o.ademamix = am = ml_collections.ConfigDict()  # AdEMAMix (optax.contrib.ademamix).
  am.b1 = 0.9                      # Fast EMA decay.
  am.b2 = 0.999                    # Second-moment decay.
  am.b3 = 0.9999                   # Slow EMA decay.
  am.alpha = 5.0                   # Weight of the slow EMA.
  am.eps = 1e-8                    # Epsilon added to sqrt(v).
  o.adopt = ad = ml_collections.ConfigDict()  # ADOPT (optax.contrib.adopt).
  ad.b1 = 0.9                      # First-moment decay.
  ad.b2 = 0.9999                   # Second-moment decay.
  ad.eps = 1e-6                    # Floor of sqrt(v).
  ad.nesterov = False              # Nesterov momentum.
  ad.use_clipping = True           # Clip the normalized gradient at step^0.25.
  o.prodigy = pr = ml_collections.ConfigDict()  # Prodigy (optax.contrib.prodigy; learning_rate=1 is its default).
  pr.b1 = 0.9                      # First-moment decay.
  pr.b2 = 0.999                    # Second-moment decay.
  pr.beta3 = placeholder(float)    # Step-size estimate decay (None: sqrt(b2)).
  pr.eps = 1e-8                    # Epsilon added to sqrt(v).
  pr.estim_lr0 = 1e-6              # Initial step-size estimate d0.
  pr.estim_lr_coef = 1.0           # Multiplier of the estimate.
  pr.safeguard_warmup = False      # Leave the rate out of the estimate during warmup.
  o.signum = sg = ml_collections.ConfigDict()  # Signum (optax.signum).
  sg.beta = 0.9                    # Momentum decay.
  o.sophia = so = ml_collections.ConfigDict()  # Sophia-H (optax.contrib.sophia).
  so.b1 = 0.965                    # Momentum decay.
  so.b2 = 0.99                     # Hessian-diagonal EMA decay.
  so.eps = 1e-8                    # Floor of gamma * h.
  so.gamma = 0.01                  # Scale of the Hessian diagonal.
  so.clip_threshold = ml_collections.FieldReference(1.0, float) # Per-coordinate update clip (None: off).
  so.update_interval = 10          # Steps between Hessian estimates.

  # Learning-rate schedule (dynamics/schedules.py).
  c.schedule = sc = ml_collections.ConfigDict()
  sc.name = 'wsd'                  # wsd | wsd_s | constant | cosine
  sc.warmup_steps = 50             # Linear warmup steps (first step uses peak/warmup_steps).
  sc.decay_fraction = 0.2          # wsd: fraction of num_steps spent decaying.
  sc.decay_shape = 'linear'        # linear | cosine | 1-sqrt
  sc.final_value = 0.0             # Learning rate reached at the end of the decay.
  sc.budgets = placeholder(tuple)  # wsd_s: increasing step budgets, each ending a decay.

  c.checkpoint = ck = ml_collections.ConfigDict()
  ck.every_steps = 100             # Steps between periodic checkpoints.
  ck.max_to_keep = 3               # Periodic checkpoints kept (latest ones).
  ck.keep_steps = ()               # Steps kept forever (for later analysis).
  ck.async_save = True             # Save asynchronously (orbax).
  ck.log_stall = False             # Record each save's blocking time in checkpoint_stall.jsonl.

  c.ema = ml_collections.ConfigDict()
  c.ema.decay = placeholder(float) # EMA of parameters (e.g. 0.999); evaluated alongside.

  c.branch = b = ml_collections.ConfigDict()
  b.from_workdir = placeholder(str) # WSD branching: parent run's workdir.
  b.from_step = placeholder(int)   # Parent checkpoint step to branch from.
  b.decay_steps = placeholder(int) # Length of the branch's decay.

  c.merge = mg = ml_collections.ConfigDict()
  mg.interval = placeholder(int)   # WSM: keep a checkpoint every `interval` steps.
  mg.window = placeholder(int)     # WSM: steps covered by the merge window.
  mg.shape = 'linear'              # WSM: emulated decay (uniform | linear | cosine | 1-sqrt).

  c.analysis = a = ml_collections.ConfigDict()
  a.sharpness_every = placeholder(int) # Log the top Hessian eigenvalue every N steps.
  a.sharpness_iters = 20           # Lanczos iterations per probe.
  a.sharpness_batches = 1          # Batches in the probe's loss.
  a.sharpness_data = 'eval'        # eval (held-out probe batches) | train (first training batches).
  a.trace_every = placeholder(int) # Log Hutchinson's Hessian trace every N steps.
  a.ntk_every = placeholder(int)   # Log NTK statistics on a probe set every N steps.
  a.ntk_num_examples = 64          # NTK probe-set size.
  a.update_sharpness_every = placeholder(int) # Log u^T H u / |u|^2 of the actual update (whole and per layer) every N steps.
  a.update_ratio_every = placeholder(int) # Log the update/weight norm ratio per layer every N steps.
  a.layer_trace_every = placeholder(int) # Log per-layer Hessian and GGN traces and their gap every N steps.
  a.layer_trace_probes = 8         # Rademacher probes shared by those traces (>= 2).
  a.spectral_norm_every = placeholder(int) # Log spectral norms of weight matrices and their updates every N steps.
  a.gns_every = placeholder(int)   # Log the gradient noise scale B_simple every N steps.
  a.gns_batches = 4                # Training batches per noise-scale estimate (>= 2).
  a.activation_rms_every = placeholder(int) # Log the RMS of each block's output every N steps.
  a.histograms_every = placeholder(int)  # TensorBoard histograms of each layer's weights, gradient and update every N steps.

  c.throughput = ml_collections.ConfigDict()
  c.throughput.peak_flops = placeholder(float) # Peak FLOP/s per device for MFU (None: device table; CPU: no MFU).

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                 # Data-parallel axis size (-1: all remaining devices).
  c.mesh.fsdp = 1                  # FSDP axis size (parameters sharded over it).
  c.mesh.fsdp_min_size = 1024      # Arrays smaller than this stay replicated under FSDP.
  c.lock()
  return c


# The optimizer sections, and which of them had flat fields before the
# sections (dynamics.config_migrate moves those).


def optimizer_sections(opt_config: Any) -> Dict[str, Any]:
  """``{optimizer name: its section}``: the sections of ``config.optimizer``
  (every sub-section but ``sam``, which any optimizer's step may use)."""
  return {k: v for k, v in opt_config.items()
          if isinstance(v, (ml_collections.ConfigDict, Mapping)) and k != 'sam'}


# The optimizers that had flat fields before the sections; a later
# optimizer's fields never had a flat name.
_FLAT_ERA = ('momentum', 'adam', 'adamw', 'adamp', 'sgdp', 'stable_spam')


def _flat_fields(opt_config: Any) -> Dict[str, type]:
  """``{field: type}`` of every field of the flat-era optimizer sections: the
  flat ``optimizer.<field>`` names of before the sections (deprecated)."""
  out = {}
  for name, section in optimizer_sections(opt_config).items():
    if name not in _FLAT_ERA:
      continue
    for field in section:
      out.setdefault(field, section.get_type(field))
  return out
