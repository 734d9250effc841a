r"""Heterogeneous replicas: DiLoCo under each sync policy against ddp, on a clock.

The main comparison's model, data, budget and tuned points (configs/compare.py),
with the M = 4 replicas on devices of unequal speed: relative speeds 1, 0.63,
0.4 and 0.25 (a 4× spread; step times from each arm's FLOPs per step at
`clock.device_flops`), joined by 1 Gbit/s links with 1 ms per hop. Arms:

* ddp: every step waits for the slowest replica and the all-reduce;
* diloco_wait_all: a round waits for the slowest replica's H steps;
* diloco_dylu: DyLU, replica i takes H_i = ⌊H · t_fastest / t_i⌋ steps, so
  all finish together (its update weighted by the examples it saw);
* diloco_deadline: the round's deadline is the median of the replicas' round
  times; a slower replica contributes the steps it finished by then;
* diloco_deadline_drop: the same deadline, a replica that missed it is left
  out of the round.
* diloco_async: Asynchronous Local-SGD (arXiv 2401.09135): the server applies
  each replica's outer gradient when it arrives, with Delayed Nesterov (N = M,
  DiLoCo's tuned outer learning rate and momentum) and DyLU; a "round" is M
  arrivals.

Every arm runs the same rounds; under dylu and deadline the slow replicas take
fewer steps, so the table's simulated time (and time to target) is the axis to
compare on, with loss against simulated wall-clock in
eval_loss_vs_simulated_wall.png.

Run (6 arms, 1 seed; alone on 2 CPU cores ddp took 147 s, async 153 s, the
DiLoCo arms 4-10 min each when run beside other jobs; results and the picture:
docs/results.md):
  python experiments/compare.py --config=configs/heterogeneous.py --workdir=runs/heterogeneous
A tiny version for tests:
  --config=configs/heterogeneous.py:smoke --sweep=tiny
"""

import ml_collections

from configs import compare

SPREAD = 4.0  # The fastest replica is this many times faster than the slowest.
DEADLINE_QUANTILE = 0.5  # The median replica's round time.
# The paper's burst grace (0.5 s against its fastest worker's 0.58 s a step),
# in the fastest replica's step times.
ASYNC_GRACE = round(0.5 / 0.58, 4)
# Policy overrides per DiLoCo arm.
POLICIES = {
    "wait_all": {"clock.policy": "wait_all"},
    "dylu": {"clock.policy": "dylu"},
    "deadline": {"clock.policy": "deadline",
                 "clock.deadline_quantile": DEADLINE_QUANTILE,
                 "clock.deadline_mode": "partial"},
    "deadline_drop": {"clock.policy": "deadline",
                      "clock.deadline_quantile": DEADLINE_QUANTILE,
                      "clock.deadline_mode": "drop"},
    "async": {"clock.policy": "async", "clock.async_rule": "delayed_nesterov",
              "clock.async_dylu": True, "clock.async_grace": ASYNC_GRACE},
}
DEFAULT_SEEDS = (0,)
# The target for time-to-target: a validation loss every arm of the CPU
# budget reaches (compare.py's DiLoCo ends near 1.6 nats/byte).
TARGET_EVAL_LOSS = 2.0


def get_config(size: str = "cpu") -> ml_collections.ConfigDict:
  """compare.py's base config with the 4× speed spread (size 'cpu' or 'smoke')."""
  config = compare.get_config(size)
  m = config.train.num_replicas
  spread = [round(SPREAD ** (-i / max(m - 1, 1)), 4) for i in range(m)]
  config.clock.speeds = tuple(spread)  # 1 down to 1/SPREAD (M = 4: 1, 0.63, 0.397, 0.25).
  config.train.target_eval_loss = TARGET_EVAL_LOSS if size == "cpu" else 5.0  # Smoke: reachable.
  return config


def _arms(config, seeds):
  arms = [compare.tuned_arm(config, "ddp", seed=s) for s in seeds]
  for policy, overrides in POLICIES.items():
    for s in seeds:
      arms.append(compare.tuned_arm(
          config, "diloco", seed=s, name=f"diloco_{policy}_s{s}",
          extra=overrides))
      arms[-1]["group"] = f"diloco_{policy}"
      o = arms[-1]["overrides"]
      if o.get("clock.policy") == "async":  # The server rule takes DiLoCo's outer step.
        hp = o.get("outer.hparams") or {}
        o["clock.async_learning_rate"] = o.get(
            "outer.hparams.learning_rate", hp.get("learning_rate", 0.0))
        o["clock.async_momentum"] = o.get("outer.hparams.momentum",
                                          hp.get("momentum", 0.9))
  return arms


SWEEPS = {"default": lambda c: _arms(c, DEFAULT_SEEDS),
          "seeds": lambda c: _arms(c, (0, 1)),
          "tiny": lambda c: _arms(c, (0,))}


def get_sweep(config: ml_collections.ConfigDict, name: str = "default"):
  """The arms of sweep `name`: [{'name', 'group', 'overrides'}]."""
  if name not in SWEEPS:
    raise ValueError(f"sweep: unknown sweep {name!r}; known: {sorted(SWEEPS)}")
  return SWEEPS[name](config)
