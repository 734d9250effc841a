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
"""

import ml_collections
from ml_collections import config_dict

from fedjax_lab import config_validation


def _unset(kind):
  """A typed empty field: overridable from the command line, None by default."""
  return config_dict.placeholder(kind)


def get_config() -> ml_collections.ConfigDict:
  """The default run config (every other config starts from this one)."""
  config = ml_collections.ConfigDict()

  # The model (fedjax_lab.models).
  config.model = ml_collections.ConfigDict()
  config.model.kind = "lm"  # 'lm' (byte-level transformer) or 'classification'.
  config.model.d_model = 64  # Transformer width (LM only).
  config.model.num_layers = 2  # Transformer blocks (LM only).
  config.model.num_heads = 4  # Attention heads; d_model / num_heads even (RoPE).
  config.model.mlp_ratio = 4  # MLP hidden width / d_model (LM only).
  config.model.seq_len = 64  # Bytes per input sequence (LM only).
  config.model.dtype = "float32"  # Compute dtype: float32, bfloat16 or float16.
  config.model.dropout = 0.0  # Dropout rate (LM only).
  config.model.remat = False  # Rematerialise each transformer block in the backward pass: one block's activations in memory, ~1/3 more compute (LM only).
  config.model.classifier = "mlp"  # 'mlp' or 'cnn' (classification only).
  config.model.hidden = ()  # Classifier widths; () = the FedAvg paper's.
  config.model.init_seed = 0  # Seed of the initial parameters (all arms share it).

  # The data (fedjax_lab.data).
  config.data = ml_collections.ConfigDict()
  config.data.dataset = "stdlib"  # 'stdlib' (built-in, offline) or a prepared TFDS name.
  config.data.subset = "small"  # stdlib subset: 'full', 'no_tests' or 'small'.
  config.data.data_dir = ""  # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data.partition = "by_source"  # Replica shards: 'iid', 'by_source' or 'dirichlet'; with train.num_clients > 0, client shards: 'by_file', 'by_group', 'dirichlet' or 'iid'.
  config.data.alpha = 0.5  # Dirichlet concentration (partition='dirichlet' only).
  config.data.eval_batch_size = 64  # Sequences per eval batch.
  config.data.eval_split = ""  # The validation split, for choosing hyperparameters; '' = 'validation' (else 'test' for TFDS datasets without one).
  config.data.test_split = "test"  # The split reported numbers come from (never used to choose anything); '' = none.
  config.data.eval_batches = 16  # Evaluations during training: a fixed shuffled sample of this many batches of each split, stratified by group; 0 = the whole split.
  config.data.final_eval_batches = 0  # The final evaluation of a completed run: batches of each split; 0 = the whole split.
  config.data.max_examples = 0  # TFDS datasets: read at most this many; 0 = all.
  config.data.prefetch = 2  # Rounds the loader prepares ahead (0 = none).

  # The inner optimizer every replica runs: AdamW with linear warm-up and
  # cosine decay, as DiLoCo (arXiv 2311.08105). The paper's lr 4e-4 is for a
  # 150M model; this 0.1M-parameter byte LM trains fastest near 3e-3. b2 =
  # 0.99 and clipping at 1 follow the DiLoCo scaling-laws paper (2503.09799).
  config.inner = ml_collections.ConfigDict()
  config.inner.optimizer = "adamw"  # 'adamw' (DiLoCo's), 'sgd' (plain/momentum SGD, e.g. for scaffold) or 'muon' (MuLoCo's: Muon on matrices, AdamW on the rest; configs/muloco.py).
  config.inner.steps = 25  # H: inner steps per round (ddp: steps per round, synced each).
  config.inner.batch_size = 16  # B: sequences per replica per inner step.
  config.inner.learning_rate = 3e-3  # Peak inner learning rate.
  config.inner.warmup_steps = 50  # Linear warm-up steps (per replica).
  config.inner.decay = "cosine"  # After warm-up: 'cosine', 'linear' or 'constant'.
  config.inner.final_lr_fraction = 0.1  # Final lr = this × peak (cosine/linear).
  config.inner.schedule_steps = 0  # Steps the decay spans; 0 = train.rounds × inner.steps of the first run (a resume keeps it).
  config.inner.b1 = 0.9  # Adam β1.
  config.inner.b2 = 0.99  # Adam β2 (DiLoCo scaling laws: 0.99).
  config.inner.eps = 1e-8  # Adam ε.
  config.inner.weight_decay = 0.1  # Decoupled weight decay (DiLoCo: 0.1).
  config.inner.grad_clip = 1.0  # Global-norm gradient clipping; 0 = off.
  config.inner.momentum = 0.0  # inner.optimizer='sgd': heavy-ball momentum, 0 = plain SGD; 'muon': Muon's momentum μ (MuLoCo: 0.9). Must be 0 for 'adamw'.

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
  config_validation.add_unset_hparams(hp, "outer")  # Any other registry hparam, unset.

  # Compression of the outer gradients (fedjax_lab.comm.compress registry).
  config.comm = ml_collections.ConfigDict()
  config.comm.compressor = "none"  # 'none', 'bf16', 'int8', 'fp4', 'topk', ... (run.py --list_algorithms lists all).
  # The compressor's hyperparameters, all unset (None = the compressor's
  # default): ef (error feedback), block_size, stochastic, bins, fraction, ...
  config.comm.hparams = ml_collections.ConfigDict()
  config_validation.add_unset_hparams(config.comm.hparams, "comm")  # e.g. --config.comm.hparams.ef=True.

  # The training loop (fedjax_lab.run).
  config.train = ml_collections.ConfigDict()
  config.train.num_replicas = 4  # M: replicas (workers, clients).
  config.train.rounds = 40  # Rounds; the token budget is rounds × M × H × B × seq_len.
  config.train.eval_every = 4  # Evaluate every this many rounds (and at the end); 0 = end only.
  config.train.checkpoint_every = 10  # Checkpoint every this many rounds (and at the end); 0 = never.
  config.train.keep = 3  # Checkpoints kept (the latest ones).
  config.train.log_every = 4  # Fetch metrics from the device and log every this many rounds.
  config.train.seed = 0  # Seed of data order, partition and per-step rngs.
  config.train.nonfinite_policy = "drop"  # A diverged replica: 'drop' (count, warn) or 'stop' (error).
  config.train.max_empty_rounds = 3  # This many rounds in a row with no replica left (all non-finite) end the run as 'diverged'; 0 = never.
  config.train.tensorboard = True  # Write TensorBoard event files to the workdir.
  # A federated population (README, "Federated populations"): N clients,
  # M = train.num_replicas of them sampled into the replica slots each round
  # (FedAvg's C·N).
  config.train.num_clients = 0  # N: clients in the population; 0 = none (M fixed replica shards).
  config.train.clients_per_round = 0  # Clients sampled per round; 0 = train.num_replicas (any other value must equal it).
  config.train.sampling = "uniform"  # Which clients per round: 'uniform' or 'weighted' (by client size).
  config.train.local_epochs = 0  # E: local epochs per sampled client (ceil(n_i/B)·E steps); 0 = inner.steps steps.
  config.train.max_local_steps = 0  # With local_epochs: cap on a client's local steps (the round's step axis); 0 = no cap.
  config.train.target_eval_loss = 0.0  # Comparison reports: rounds to the first eval with loss <= this; 0 = no target.
  config.train.outer_drop_prob = 0.0  # Each round, drop each replica's outer gradient with this probability (a lossy network, DiLoCo's ablation); the replica restarts from the new global model.

  # How the engine runs replicas (fedjax_lab.engine.Engine).
  config.engine = ml_collections.ConfigDict()
  # Streaming DiLoCo (arXiv 2501.18512): the params split into P fragments, fragment p synced
  # after step (p+1)*H/P of every round; 1, 0, 0.0 is the plain round.
  config.engine.num_fragments = 1  # P >= 1, dividing inner.steps.
  config.engine.overlap_steps = 0  # tau in [0, H): inner steps a fragment's outer result lands late.
  config.engine.merge_alpha = 0.0  # alpha in [0, 1]: merge theta_i <- alpha*theta_i + (1-alpha)*theta.
  config.engine.replica_mode = "auto"  # Replicas on one device: 'vmap' (together), 'sequential' (one at a time, less memory) or 'auto'.

  # The simulated clock (fedjax_lab.clock, docs/clock.md): how long the run would take with each
  # replica on its own device, joined by a network. Only the policy changes training ('wait_all'
  # with equal speeds trains exactly as no clock); every run records its simulated seconds.
  config.clock = ml_collections.ConfigDict()
  config.clock.policy = "wait_all"  # 'wait_all' (a round waits for the slowest), 'dylu' (steps per replica ∝ its speed), 'deadline' or 'async'.
  config.clock.step_seconds = 0.0  # Seconds of one inner step at speed 1 (the replica's own batch); 0 = training FLOPs per step / clock.device_flops.
  config.clock.device_flops = 1e12  # FLOP/s one replica's device sustains (used when step_seconds = 0).
  config.clock.speeds = ()  # Relative speed of each replica (M numbers > 0, 1 = the device above); () = all 1.
  config.clock.lognormal_sigma = 0.0  # Also multiply each speed by exp(sigma * z), z ~ N(0, 1) seeded by train.seed; 0 = off.
  config.clock.straggler_prob = 0.0  # Each round each replica straggles with this probability (seeded by train.seed and the round).
  config.clock.straggler_factor = 4.0  # A straggler's steps take this many times longer (>= 1).
  config.clock.bandwidth_gbps = 1.0  # Each replica's link to the others, Gbit/s (> 0).
  config.clock.latency_s = 1e-3  # Latency of one hop, seconds (ring all-reduce: 2(M-1) hops).
  config.clock.bandwidths_gbps = ()  # Per island: replica i's own link, Gbit/s (M numbers > 0), replacing bandwidth_gbps; () = all bandwidth_gbps. A ring or group is paced by its slowest link (min), an async arrival by its replica's.
  config.clock.latencies_s = ()  # Per island: replica i's latency per hop, seconds (M numbers >= 0), replacing latency_s; () = all latency_s. A ring or group pays its largest per hop, an async arrival its replica's.
  config.clock.deadline_quantile = 0.75  # policy='deadline': D = this quantile of the replicas' round compute times, in (0, 1].
  config.clock.deadline_seconds = 0.0  # policy='deadline': D in seconds of compute instead (> 0); 0 = use the quantile.
  config.clock.deadline_mode = "partial"  # policy='deadline': 'partial' (a late replica's finished steps count) or 'drop' (it is left out).
  config.clock.dylu_min_steps = 1  # policy='dylu': the fewest local steps a replica takes.
  # policy='async' (Asynchronous Local-SGD, arXiv 2401.09135; fedjax_lab/async_local_sgd.py): the
  # server applies each replica's outer gradient when it arrives; a round is M arrivals.
  config.clock.async_rule = "delayed_nesterov"  # policy='async': server rule, 'delayed_nesterov' (DN) or 'vanilla' (Nesterov SGD on Δ_i/√M).
  config.clock.async_learning_rate = 0.0  # policy='async': the server rule's learning rate; 0 = the rule's default (DN 0.7, vanilla 0.07).
  config.clock.async_momentum = 0.9  # policy='async': the server rule's (Nesterov) momentum, in [0, 1).
  config.clock.async_delay = 0  # policy='async': DN's N, arrivals per momentum update; 0 = train.num_replicas (the paper's).
  config.clock.async_grace = 0.0  # policy='async': arrivals within this many of the fastest replica's step times after a burst's first one join the burst.
  config.clock.async_dylu = False  # policy='async': DyLU, replica i takes max(⌊H·t_fastest/t_i⌋, clock.dylu_min_steps) steps per task.

  # Devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = -1  # Shard replicas over this many devices: 0 = none (vmap), -1 = all.
  config.mesh.min_shard_size = 16384  # State leaves with fewer elements stay whole on the model axis.
  config.mesh.model_devices = 1  # Devices each replica's model is split over (FSDP-style, a 2-D replica x model mesh); must divide the mesh's devices.

  return config
