r"""Accelerator benchmark: the byte LM at scale, ddp vs DiLoCo, both modes.

(Over 400 lines on purpose: one benchmark, one file: its configurations, the
MFU arithmetic and its report.)

For each configuration (ddp at M replicas; DiLoCo at M replicas with the
replicas vmapped ('vmap') or run one after another ('sequential')), one
`Engine.round` of H inner steps is timed (median of interleaved repeats,
round_throughput's `_time`) and reported as:

* tokens/s: M·H·B·seq_len tokens per round / seconds per round;
* MFU: model FLOPs (the Task's `flops_per_example` = (6·N + 12·layers·seq·d)
  ·seq per sequence, i.e. no credit for rematerialisation) per second over
  the devices' peak dense bf16 FLOP/s (`PEAK_TFLOPS`, or --peak_tflops);
  'n/a' on CPU unless --peak_tflops is given (the peak is bf16's, also for
  --dtype float32);
* peak MiB: the compiled round's peak memory (`memory_analysis()`:
  `peak_memory_in_bytes`, else arguments + temporaries + outputs − aliased;
  per device on a mesh) and, where the backend keeps it (GPU, TPU), device
  0's high-water mark `memory_stats()['peak_bytes_in_use']` (never reset: the
  most over this configuration and every one measured before it);
* outer share: the sync alone (`Engine._sync`, jitted on its own, as
  bench/round_throughput.py's `outer_share` does) over a whole round, at this
  H; '-' for ddp, which has no outer step;
* vs ddp: tokens/s over ddp's at the same M.

Targets on a GPU: MFU >= 45% for ddp and DiLoCo, and DiLoCo
tokens/s >= 0.95x ddp's.

Sizes (--preset) follow GPT-3's table 2.1 (d_model, layers, heads) at seq
1024, bf16 compute with float32 params and AdamW moments, and block
rematerialisation; the vocabulary is 256 bytes, so N is about 12·layers·d²
(the '125m' model has 85M parameters). --auto picks the largest preset whose
worst configuration fits the device's `bytes_limit` with headroom (an
analytic estimate, then the compiled program's own memory analysis).

Run:
  python bench/accelerator.py --preset tiny           # CPU, seconds
  python bench/accelerator.py --auto --out docs/accelerator_gpu.md  # GPU/TPU
  python bench/accelerator.py --preset 1b --replicas 2,4 --inner_steps 10
"""

import argparse
import gc
import importlib.util
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fedjax_lab
from fedjax_lab import models


def _load_round_throughput():
  """bench/ is not a package: load its sibling module by path."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "round_throughput.py")
  spec = importlib.util.spec_from_file_location("_bench_round_throughput",
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_rt = _load_round_throughput()

# GPT-3 (arXiv:2005.14165) table 2.1 shapes; '1b' is its 1.3B row. batch is
# the default per-replica batch B (sequences per inner step).
PRESETS: Dict[str, Dict[str, int]] = {
    "tiny": dict(d_model=32, num_layers=2, num_heads=2, seq_len=16, batch=2),
    "125m": dict(d_model=768, num_layers=12, num_heads=12, seq_len=1024,
                 batch=16),
    "350m": dict(d_model=1024, num_layers=24, num_heads=16, seq_len=1024,
                 batch=8),
    "760m": dict(d_model=1536, num_layers=24, num_heads=16, seq_len=1024,
                 batch=8),
    "1b": dict(d_model=2048, num_layers=24, num_heads=16, seq_len=1024,
               batch=8),
}

# Peak dense bf16 TFLOP/s per device, matched in order on the lower-cased
# `device_kind` (first match wins, so the more specific names come first).
# Sources: NVIDIA H100/H200 and A100 datasheets (SXM, without sparsity);
# Google Cloud TPU system architecture pages (per chip).
PEAK_TFLOPS = (
    ("h100 pcie", 756.0),
    ("h100", 989.0),
    ("h200", 989.0),
    ("gh200", 989.0),
    ("a100", 312.0),
    ("tpu v4", 275.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),
    ("tpu v6 lite", 918.0),
    ("tpu v6e", 918.0),
)

# --auto keeps this share of the device's memory free for XLA's own buffers.
HEADROOM = 0.85


def peak_tflops(device_kind: str) -> Optional[float]:
  """The device's peak dense bf16 TFLOP/s from `PEAK_TFLOPS`, or None."""
  kind = device_kind.lower()
  for name, tflops in PEAK_TFLOPS:
    if name in kind:
      return tflops
  return None


def make_task(preset: str, dtype: str = "bfloat16", remat: bool = True,
              **overrides):
  """The LM Task of a preset (`PRESETS`), fields overridable."""
  shape = {**PRESETS[preset], **overrides}
  return models.lm_task(d_model=shape["d_model"],
                        num_layers=shape["num_layers"],
                        num_heads=shape["num_heads"], mlp_ratio=4,
                        seq_len=shape["seq_len"], dtype=dtype, remat=remat)


def estimate_bytes(shape: Dict[str, int], *, algorithm: str, m: int, mode: str,
                   batch: int, remat: bool = True) -> float:
  """A rough upper estimate of one round's device memory, in bytes.

  State: float32 params and AdamW moments (3 copies) for ddp; for DiLoCo the
  global params and outer momentum plus M × (params, 2 moments). Round: the
  float32 gradient, a bf16 copy of the params and one replica's activations,
  times M when the replicas are vmapped (ddp sums its M replicas in one
  backward pass of batch M·B). Activations per layer, bf16, are
  seq·B·(34·d + 5·heads·seq) bytes (Korthikanti et al., arXiv:2205.05198,
  eq. 1); with remat only each block's input (2·seq·B·d bytes) is kept, plus
  one block recomputed.
  """
  d, layers, heads, seq = (shape["d_model"], shape["num_layers"],
                           shape["num_heads"], shape["seq_len"])
  n = 12 * layers * d * d + 2 * 256 * d
  per_layer = seq * batch * (34 * d + 5 * heads * seq)
  acts = (layers * 2 * seq * batch * d + per_layer if remat else
          layers * per_layer) + 3 * 4 * seq * batch * 256  # Logits, float32.
  if algorithm == "ddp":
    return 4 * n * 3 + 4 * n + 2 * n + m * acts
  copies = m if mode == "vmap" else 1
  return 4 * n * (2 + 3 * m) + copies * (4 * n + 2 * n + acts)


def _compiled_mib(compiled) -> float:
  """MiB at the compiled program's peak (NaN where the backend says none)."""
  ma = compiled.memory_analysis()
  if ma is None:
    return float("nan")
  peak = getattr(ma, "peak_memory_in_bytes", 0)
  if not peak:
    peak = (ma.argument_size_in_bytes + ma.temp_size_in_bytes +
            ma.output_size_in_bytes - ma.alias_size_in_bytes)
  return peak / 2**20


def _device_peak_mib() -> float:
  """The device's high-water mark so far (NaN where not kept, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return float("nan")
  return stats["peak_bytes_in_use"] / 2**20


def _inner_opt():
  return optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1)


def _engine(task, algorithm, m, mode, h, mesh):
  return fedjax_lab.Engine(
      task.loss_fn, inner_opt=_inner_opt(), outer=algorithm, num_replicas=m,
      inner_steps=h, mesh=mesh,
      replica_mode="auto" if algorithm == "ddp" else mode)


def measure(task, *, algorithm: str, m: int, mode: str, inner_steps: int,
            batch: int, seq_len: int, repeats: int, mesh=None,
            memory_analysis: bool = True, seed: int = 0) -> Dict[str, Any]:
  """Times one configuration's round; its memory and outer-step share.

  Returns:
    A dict: seconds per round, tokens per round, round FLOPs, compiled peak
    MiB, device high-water MiB, outer share (NaN for ddp), compiled round
    programs and the last round's loss.
  """
  h = inner_steps
  engine = _engine(task, algorithm, m, mode, h, mesh)
  holder = {"state": engine.init(task.init(jax.random.PRNGKey(seed)))}
  rs = np.random.RandomState(seed)
  host_batch = {"tokens": rs.randint(0, 256, size=(m, h, batch, seq_len + 1))
                          .astype(np.int32)}
  # On one device the batch is placed once, so no round pays a transfer; on a
  # mesh the engine lays it out itself.
  batch_in = host_batch if mesh is not None else jax.device_put(host_batch)
  last = {}

  def one_round():
    holder["state"], metrics = engine.round(holder["state"], batch_in)
    last["loss"] = metrics["loss"]
    jax.block_until_ready(metrics["loss"])

  fns = [one_round]
  if algorithm != "ddp":
    sync_only = _rt.sync_only_fn(engine, h)
    fns.append(lambda: jax.block_until_ready(sync_only(holder["state"])))
  times = _rt._time(fns, repeats)  # pylint: disable=protected-access
  compiled_rounds = engine.compiled_rounds()
  mib = float("nan")
  if memory_analysis:
    mib = _compiled_mib(engine.lower_round(holder["state"], batch_in).compile())
  out = {
      "seconds": times[0],
      "tokens": m * h * batch * seq_len,
      "flops": task.flops_per_example * m * h * batch,
      "compiled_mib": mib,
      "device_peak_mib": _device_peak_mib(),
      "outer_share": times[1] / times[0] if len(times) > 1 else float("nan"),
      "compiled_rounds": compiled_rounds,
      "loss": float(last["loss"]),
  }
  # The closures above keep these names alive; drop what they point to so the
  # next preset's state fits.
  holder.clear()
  fns.clear()
  gc.collect()
  return out


def fits(preset: str, *, algorithms: Sequence[str], replicas: Sequence[int],
         modes: Sequence[str], inner_steps: int, batch: Optional[int],
         dtype: str, remat: bool, bytes_limit: float,
         compile_check: bool = True, **overrides) -> bool:
  """Whether the preset's most memory-hungry configuration fits on one
  device (`overrides` as `make_task`'s)."""
  shape = {**PRESETS[preset], **overrides}
  b = batch or shape["batch"]
  configs = [(a, m, md) for a in algorithms for m in replicas
             for md in (modes if a != "ddp" else ("-",))]
  worst = max(configs, key=lambda c: estimate_bytes(
      shape, algorithm=c[0], m=c[1], mode=c[2], batch=b, remat=remat))
  estimate = estimate_bytes(shape, algorithm=worst[0], m=worst[1],
                            mode=worst[2], batch=b, remat=remat)
  if estimate > HEADROOM * bytes_limit:
    return False
  if not compile_check:
    return True
  # Lowered from shapes alone: nothing of the model is allocated.
  task = make_task(preset, dtype, remat, **overrides)
  algorithm, m, mode = worst
  engine = _engine(task, algorithm, m, mode, inner_steps, None)
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  state = engine.abstract_state(params)
  tokens = jax.ShapeDtypeStruct((m, inner_steps, b, shape["seq_len"] + 1),
                                jnp.int32)
  mib = _compiled_mib(engine.lower_round(state, {"tokens": tokens}).compile())
  return math.isnan(mib) or mib * 2**20 <= HEADROOM * bytes_limit


def choose_preset(**fit_kwargs) -> str:
  """The largest preset that fits device 0 ('tiny' where no limit is known)."""
  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  if not limit:
    return "tiny"
  for preset in ("1b", "760m", "350m", "125m"):
    if fits(preset, bytes_limit=limit, **fit_kwargs):
      return preset
  return "tiny"


def default_num_devices(replicas: Sequence[int]) -> int:
  """1 on CPU; on an accelerator, the most devices that divide every M (each
  device runs M / devices replicas; the rest stay idle and out of MFU)."""
  if jax.default_backend() == "cpu":
    return 1
  return max(d for d in range(1, jax.device_count() + 1)
             if all(m % d == 0 for m in replicas))


def run(*, preset: str = "tiny", algorithms: Sequence[str] = ("ddp", "diloco"),
        replicas: Sequence[int] = (2, 4),
        modes: Sequence[str] = ("vmap", "sequential"), inner_steps: int = 10,
        batch: Optional[int] = None, dtype: str = "bfloat16",
        remat: bool = True, repeats: int = 5, num_devices: int = 1,
        peak: Optional[float] = None, memory_analysis: bool = True,
        log=lambda line: print(line, flush=True),
        **overrides) -> List[Dict[str, Any]]:
  """Measures every configuration; one row dict per configuration.

  Args:
    preset: a `PRESETS` name.
    algorithms: 'ddp' and/or 'diloco' (any outer registry name works).
    replicas: the M to measure.
    modes: replica modes for the non-data-parallel algorithms (ddp sums its
      replicas in one backward pass: it has no mode).
    inner_steps: H.
    batch: per-replica batch B (default the preset's).
    dtype: compute dtype ('bfloat16' or 'float32'); params are float32.
    remat: rematerialise each transformer block.
    repeats: timed rounds per configuration (after two warm-up rounds).
    num_devices: devices the replicas are sharded over (1: no mesh).
    peak: peak TFLOP/s per device for MFU (default by device kind; None on
      CPU: MFU is NaN).
    memory_analysis: compile each round once more for its memory analysis.
    log: where progress lines go (None: nowhere).
    **overrides: preset fields to override (d_model, num_layers, num_heads,
      seq_len).

  Returns:
    Rows with keys algorithm, m, mode, tokens_per_s, mfu, compiled_mib,
    device_peak_mib, outer_share, vs_ddp, compiled_rounds, loss, seconds.
  """
  shape = {**PRESETS[preset], **overrides}
  b = batch or shape["batch"]
  task = make_task(preset, dtype, remat, **overrides)
  if peak is None and jax.default_backend() != "cpu":
    peak = peak_tflops(jax.devices()[0].device_kind)
  mesh = (fedjax_lab.replica_mesh(num_devices) if num_devices > 1 else None)
  rows, ddp_tps = [], {}
  for algorithm in algorithms:
    for m in replicas:
      for mode in (("-",) if algorithm == "ddp" else modes):
        r = measure(task, algorithm=algorithm, m=m, mode=mode,
                    inner_steps=inner_steps, batch=b,
                    seq_len=shape["seq_len"], repeats=repeats, mesh=mesh,
                    memory_analysis=memory_analysis)
        tps = r["tokens"] / r["seconds"]
        mfu = (r["flops"] / r["seconds"] / (peak * 1e12 * num_devices)
               if peak else float("nan"))
        if algorithm == "ddp":
          ddp_tps[m] = tps
        row = dict(algorithm=algorithm, m=m, mode=mode, tokens_per_s=tps,
                   mfu=mfu, vs_ddp=tps / ddp_tps[m] if m in ddp_tps else
                   float("nan"), **{k: r[k] for k in (
                       "compiled_mib", "device_peak_mib", "outer_share",
                       "compiled_rounds", "loss", "seconds")})
        rows.append(row)
        if log:
          log(f"  {algorithm} M={m} {mode}: {tps:,.0f} tokens/s, "
              f"{r['seconds'] * 1e3:.1f} ms/round")
  return rows


def _fmt(x: float, spec: str, scale: float = 1.0, suffix: str = "") -> str:
  return "n/a" if x is None or math.isnan(x) else f"{x * scale:{spec}}{suffix}"


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
  """The rows as a markdown table."""
  lines = ["| algorithm | M | mode | tokens/s | MFU | peak MiB (compiled) | "
           "device peak MiB | outer share | vs ddp |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['algorithm']} | {r['m']} | {r['mode']} | "
        f"{r['tokens_per_s']:,.0f} | {_fmt(r['mfu'], '.1f', 100, '%')} | "
        f"{_fmt(r['compiled_mib'], ',.1f')} | "
        f"{_fmt(r['device_peak_mib'], ',.0f')} | "
        + ("-" if r["algorithm"] == "ddp" else
           _fmt(r["outer_share"], ".2f", 100, "%"))
        + f" | {_fmt(r['vs_ddp'], '.3f', 1, 'x')} |")
  return "\n".join(lines)


def _ints(s: str) -> List[int]:
  return [int(x) for x in s.split(",") if x]


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                 help="model size (default: tiny on CPU; see --auto)")
  p.add_argument("--auto", action="store_true",
                 help="the largest preset whose worst configuration fits")
  p.add_argument("--algorithms", default="ddp,diloco")
  p.add_argument("--replicas", default="2,4", help="the M, comma-separated")
  p.add_argument("--modes", default="vmap,sequential")
  p.add_argument("--inner_steps", type=int, default=10, help="H")
  p.add_argument("--batch", type=int, default=None,
                 help="per-replica batch B (default the preset's)")
  p.add_argument("--seq_len", type=int, default=None,
                 help="override the preset's sequence length")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--no_remat", action="store_true")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--num_devices", type=int, default=None,
                 help="devices to shard replicas over (default: 1 on CPU; "
                      "on an accelerator the most that divide every M)")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="peak TFLOP/s per device for MFU (default by device "
                      "kind; MFU is n/a on CPU without it)")
  p.add_argument("--no_memory_analysis", action="store_true",
                 help="skip the second compile for memory_analysis()")
  p.add_argument("--out", default=None, help="also write the table here")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
  """Runs the benchmark from command-line arguments; returns the rows."""
  args = _parse(argv)
  algorithms = [a for a in args.algorithms.split(",") if a]
  replicas, modes = _ints(args.replicas), [
      x for x in args.modes.split(",") if x]
  remat = not args.no_remat
  overrides = {} if args.seq_len is None else {"seq_len": args.seq_len}
  if args.auto:
    preset = choose_preset(algorithms=algorithms, replicas=replicas,
                           modes=modes, inner_steps=args.inner_steps,
                           batch=args.batch, dtype=args.dtype, remat=remat,
                           **overrides)
  else:
    preset = args.preset or "tiny"
  num_devices = args.num_devices or default_num_devices(replicas)
  shape = {**PRESETS[preset], **overrides}
  task = make_task(preset, args.dtype, remat, **overrides)
  device = jax.devices()[0]
  peak = args.peak_tflops or (None if jax.default_backend() == "cpu" else
                              peak_tflops(device.device_kind))
  header = (
      f"device: {device.device_kind} ({jax.default_backend()}) x "
      f"{num_devices}, jax {jax.__version__}; peak "
      f"{'n/a' if peak is None else f'{peak:g} TFLOP/s'} per device\n\n"
      f"model: preset {preset}, d_model {shape['d_model']}, "
      f"{shape['num_layers']} layers, {shape['num_heads']} heads, seq "
      f"{shape['seq_len']}, {task.num_params:,} params, {args.dtype}, "
      f"remat {remat}; H = {args.inner_steps}, B = "
      f"{args.batch or shape['batch']} per replica, inner AdamW; "
      f"{task.flops_per_example:.3g} model FLOPs per sequence")
  print(header, flush=True)
  rows = run(preset=preset, algorithms=algorithms, replicas=replicas,
             modes=modes, inner_steps=args.inner_steps, batch=args.batch,
             dtype=args.dtype, remat=remat, repeats=args.repeats,
             num_devices=num_devices, peak=peak,
             memory_analysis=not args.no_memory_analysis, **overrides)
  table = format_table(rows)
  print()
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(f"# Accelerator benchmark\n\n`python bench/accelerator.py "
              f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
              f"{header}\n\n{table}\n")
  return rows


if __name__ == "__main__":
  main()
