r"""Default config: DiLoCo on the built-in stdlib corpus (a small byte LM).

M = 4 replicas, each running H = 25 AdamW steps between outer Nesterov
steps, on the `small` subset of the CPython standard library partitioned
by top-level package (non-i.i.d.). Sized to train in minutes on a laptop
CPU; scale `model.*`, `inner.*` and `train.rounds` up on an accelerator.

Run:
  python experiments/run.py --config=configs/default.py --workdir=/tmp/fedjax_lab/default

Override any field on the command line, e.g.
  --config.outer.hparams.learning_rate=0.5 --config.inner.steps=50
  --config.outer.name=fedadam --config.outer.hparams.tau=0.01
(unset hyperparameters take the algorithm's paper defaults; configs/<family>.py
hold tuned ones).

Every group but `outer` and `comm` starts at the defaults of the typed part its
component defines, where each field is documented (fedjax_lab/config_schema.py
lists them: model → models/tasks.py LMSpec / ClassifierSpec, data →
data/data_spec.py, inner → inner_opt.py, train → config_schema.TrainSpec,
engine and mesh → layout.py, clock → clock.py); this file sets only what
differs from them.
"""

import ml_collections
from ml_collections import config_dict

from fedjax_lab import config_schema


def _unset(kind):
  """A typed empty field: overridable from the command line, None by default."""
  return config_dict.placeholder(kind)


def get_config() -> ml_collections.ConfigDict:
  """The default run config (every other config starts from this one)."""
  groups = config_schema.default_groups()
  config = ml_collections.ConfigDict()
  config.model = groups["model"]  # model.kind 'lm': a small byte-level transformer.
  config.data = groups["data"]  # The built-in stdlib corpus, split by package.
  config.inner = groups["inner"]  # AdamW, warm-up and cosine decay (DiLoCo's).

  # The outer algorithm (fedjax_lab.outer registry).
  config.outer = ml_collections.ConfigDict()
  config.outer.name = "diloco"  # Registry name: see fedjax_lab.outer.names().
  # Hyperparameters of that algorithm (fedjax_lab.outer.hparams(name) lists
  # them). None = the algorithm's own default (its paper's), so switching
  # --config.outer.name needs nothing else; a value set here that the chosen
  # algorithm does not take is an error naming it.
  config.outer.hparams = ml_collections.ConfigDict()
  hp = config.outer.hparams
  hp.learning_rate = _unset(float)  # Outer/server lr (diloco 0.7, fedavg 1, fedopt 1e-2).
  hp.momentum = _unset(float)  # Outer momentum (diloco, fedavgm: 0.9).
  hp.nesterov = _unset(bool)  # diloco: Nesterov momentum (True).
  hp.b1 = _unset(float)  # FedOpt β1 (0.9).
  hp.b2 = _unset(float)  # FedOpt β2 (0.99 paper form, 0.999 bias-corrected).
  hp.tau = _unset(float)  # FedOpt adaptivity τ (1e-3).
  hp.bias_correction = _unset(bool)  # FedOpt: Keras/optax form (False).
  hp.beta = _unset(float)  # EASGD moving rate β = M·α (0.9).
  hp.rho = _unset(float)  # EASGD elastic penalty ρ per local step (0).
  hp.mu = _unset(float)  # FedProx proximal μ (0.01).
  hp.outer = _unset(str)  # FedProx: the outer rule it wraps ('fedavg').
  hp.alpha = _unset(float)  # PAPA: keep fraction α (0.99).
  hp.reset_inner_state = _unset(bool)  # Reset inner optimizer each round.
  config_schema.add_unset_hparams(hp, "outer")  # Any other registry hparam, unset.

  # Compression of the outer gradients (fedjax_lab.comm.compress registry).
  config.comm = ml_collections.ConfigDict()
  config.comm.compressor = "none"  # 'none', 'bf16', 'int8', 'fp4', 'topk', ... (run.py --list_algorithms lists all).
  # The compressor's hyperparameters, all unset (None = the compressor's
  # default): ef (error feedback), block_size, stochastic, bins, fraction, ...
  config.comm.hparams = ml_collections.ConfigDict()
  config_schema.add_unset_hparams(config.comm.hparams, "comm")  # e.g. --config.comm.hparams.ef=True.

  config.train = groups["train"]  # M = 4 replicas, 40 rounds.
  config.engine = groups["engine"]  # The plain round (no Streaming fragments).
  config.clock = groups["clock"]  # Equal replicas on 1 TFLOP/s, 1 Gbit/s links.
  config.mesh = groups["mesh"]  # Replicas sharded over all devices.
  return config
