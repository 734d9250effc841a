"""Network simulator: wall-clock and compute utilisation of DDP, DiLoCo and
Streaming DiLoCo, and the bandwidth each needs for a target utilisation.

References:
  * Charles et al., "Communication-Efficient Language Model Training Scales
    Reliably and Robustly: Scaling Laws for DiLoCo", arXiv 2503.09799.
    Appendix A (B in later versions) gives an idealised wall-clock model:
    compute time C / (R·Q) plus, per all-reduce of N parameters over R nodes,
    2·N·(1 − 1/R) / W + ε (bandwidth-optimal all-reduce, Patarasuk & Yuan
    2009), summed without overlap. Its Table 6 (§5.1 in v1; Table 7 in the
    appendix of later versions) is NOT computed with that formula: it was made
    with the Streaming DiLoCo paper's simulator (a DAG of per-layer forward,
    backward and gradient-reduction nodes) from a step time estimated with
    Kaplan et al.'s 6N FLOPs rule at 60% MFU (0.8 s for the 10B model).
  * Douillard et al., "Streaming DiLoCo with overlapping communication",
    arXiv 2501.18512 (§3.1, Table 4): the simulator, P fragments of 3 layers,
    overlap of τ inner steps.

The model here (all times in seconds, bandwidth W in Gbit/s, M replicas):

  Ring all-reduce of B bytes:  t(B) = 2·(M − 1)·ε + 2·(M − 1)/M · 8·B / (W·1e9)
    (each replica sends and receives 2·(M − 1)/M of the payload; a ring has
    2·(M − 1) sequential hops, each paying the latency ε). t = 0 when M = 1.

  A sync event moves B = payload / P bytes (P = 1 except Streaming DiLoCo)
  every k = H / P inner steps (H = 1 for DDP). With step time T (forward +
  backward compute only), a backward share β of it (2/3 by default: the 6N
  rule's 2N forward + 4N backward FLOPs) and L layers whose reductions can
  start as soon as each layer's backward is done (the Streaming DiLoCo DAG),
  the communication that is NOT hidden behind compute is

    τ = 0:  e = max(t / L, t − β·T·(1 − 1/L))
    τ ≥ 1:  e = max(0, t − τ·T − β·T·(1 − 1/L))

  (for τ = 0 the reduction of the first layer, finished last, always shows;
  with τ ≥ 1 overlapped steps it hides behind them too), and one interval of
  k steps takes  max(k·T + e, t)  (the link cannot carry more than one sync
  per t seconds). Then

    wall_seconds_per_step = max(k·T + e, t) / k,
    utilisation           = k·T / max(k·T + e, t).

  `num_layers=1` (the default) means no layer-wise overlap, e = t: compute and
  communication simply add up, as in the scaling-laws paper's Appendix A.

Assumptions, loudly: the only network is the cross-replica one (inner-step
traffic inside a replica is free); fragments are equal; all replicas are in
lock-step; the link is full-duplex and not shared with anything else;
bandwidth is decimal (1 Gbit = 1e9 bits).

Reproducing Table 6 (10B, 90% utilisation: 222 Gbit/s for data-parallel,
13.3 Gbit/s for DiLoCo H = 100). Inputs from the papers: 10B parameters,
T = 0.8 s, L = 48 layers, M = 2, no latency, β = 2/3. The papers do not say how
many bits per parameter their simulator sends. With bf16 (16 bits, the
representation the scaling-laws paper trains in) this model gives 262 and 17.0
Gbit/s (18% and 28% high). The one free number, wire bits per parameter, is
fitted on the OTHER rows of the same table (Llama3 405B and DeepSeek-V3 671B,
50 cells) at 12.3 bits (`TABLE6_WIRE_BITS_PER_PARAM`); with it the model gives
201 and 13.1 Gbit/s, which both round up to the paper's figures on its
bandwidth grid (np.logspace(-1, 3, 50), see `round_up_to_paper_grid`), and it
puts 48 of the table's 75 cells on the paper's grid value and 26 more one grid
step (about 20%) away; the last is DeepSeek's "1000+" (the model says 687).
Neither paper says what its simulator sends per parameter: 12.3 is an
empirical constant of that simulator, not a number format. Use real byte
counts (`Compressor.payload_bytes`) for anything else.

The model's functions (`simulate`, `required_bandwidth` ...) are in
`fedjax_lab.comm.netmodel` and importable from here; this module holds the
papers' tables, the what-if tables and the CLI.
"""

import argparse
import math
import sys
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from fedjax_lab.comm.netmodel import allreduce_seconds  # noqa: F401 (re-exported)
from fedjax_lab.comm.netmodel import check
from fedjax_lab.comm.netmodel import DEFAULT_BACKWARD_FRACTION  # noqa: F401 (re-exported)
from fedjax_lab.comm.netmodel import METHODS  # noqa: F401 (re-exported)
from fedjax_lab.comm.netmodel import required_bandwidth
from fedjax_lab.comm.netmodel import simulate
from fedjax_lab.comm.netmodel import simulated_wall_clock  # noqa: F401 (re-exported)
from fedjax_lab.comm.netmodel import utilisation  # noqa: F401 (re-exported)

# The grid the scaling-laws / Streaming DiLoCo tables report bandwidth on: the
# smallest of these at which the target utilisation is met (every number in
# those tables is one of them, e.g. 13.3, 16.0, 184.2, 222.3).
PAPER_BANDWIDTH_GRID_GBPS = np.logspace(-1, 3, 50)

# Wire bits per parameter that make this model match Table 6's Llama3 405B and
# DeepSeek-V3 671B rows (see the module docstring and tests/test_netsim.py,
# which refits it). Not a property of any real format.
TABLE6_WIRE_BITS_PER_PARAM = 12.3

# arXiv 2503.09799 (v1) Table 6, "Gbit/s to reach a compute utilization CU":
# {model: (params, layers, step seconds, {H: [CU 50%, 80%, 90%, 95%, 99%]})}
# with H = 1 for data-parallel (the table lists DiLoCo H = 1 with the same
# numbers). Layers: 10B from the paper's Table 3; Llama3 405B has 126 and
# DeepSeek-V3 61 (their technical reports). 1000.0 stands for "1000.0+".
TABLE6_CU_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
TABLE6 = {
    "Chinchilla 10B": (10e9, 48, 0.8, {
        1: [104.8, 184.2, 222.3, 222.3, 390.7],
        10: [16.0, 49.4, 86.8, 152.6, 222.3],
        50: [3.0, 11.0, 23.3, 41.0, 126.5],
        100: [1.4, 6.2, 13.3, 23.3, 86.8],
        300: [0.5, 2.0, 4.3, 9.1, 41.0]}),
    "Llama3 405B": (405e9, 126, 26.0, {
        1: [126.5, 222.3, 268.3, 323.8, 323.8],
        10: [19.3, 72.0, 126.5, 184.2, 268.3],
        50: [3.6, 13.3, 28.1, 59.6, 184.2],
        100: [2.0, 7.5, 16.0, 33.9, 126.5],
        300: [0.7, 3.0, 6.2, 13.3, 59.6]}),
    "DeepSeek-V3 671B": (671e9, 61, 20.0, {
        1: [323.8, 569.0, 686.6, 686.6, 1000.0],
        10: [49.4, 152.6, 268.3, 390.7, 686.6],
        50: [7.5, 33.9, 72.0, 126.5, 390.7],
        100: [4.3, 16.0, 41.0, 72.0, 268.3],
        300: [1.7, 6.2, 13.3, 28.1, 126.5]}),
}

# Streaming DiLoCo (arXiv 2501.18512) Table 4 scales: params -> (layers, step
# seconds), step times from the 6N rule at 60% MFU; fragments of 3 layers.
PAPER_MODELS = {1e9: (24, 0.1), 10e9: (48, 0.8), 100e9: (108, 4.9)}


def round_up_to_paper_grid(gbps: float) -> float:
  """The smallest value of `PAPER_BANDWIDTH_GRID_GBPS` >= gbps (inf if none).

  The papers' tables report the first bandwidth of that grid at which the
  target is met, so a model's continuous answer is compared after this.
  """
  grid = PAPER_BANDWIDTH_GRID_GBPS
  i = int(np.searchsorted(grid, gbps * (1 - 1e-12)))
  return float(grid[i]) if i < len(grid) else math.inf


def table6_required_bandwidth(model: str, inner_steps: int,
                              target_utilisation: float,
                              wire_bits_per_param: float =
                              TABLE6_WIRE_BITS_PER_PARAM) -> float:
  """This model's answer for one cell of scaling-laws Table 6.

  Args:
    model: a key of `TABLE6`.
    inner_steps: H; 1 means data-parallel.
    target_utilisation: one of `TABLE6_CU_LEVELS` (any value in (0, 1] works).
    wire_bits_per_param: bits each parameter costs on the wire.

  Returns:
    Gbit/s (continuous; see `round_up_to_paper_grid`).
  """
  params, layers, step, _ = TABLE6[model]
  method = "every_step" if inner_steps == 1 else "blocking"
  return required_bandwidth(
      method, target_utilisation=target_utilisation, step_seconds=step,
      payload_bytes=params * wire_bits_per_param / 8, num_replicas=2,
      inner_steps=inner_steps, num_layers=layers)


def _variants(params: float, layers: int, inner_steps: int,
              fragment_layers: int, overlap_steps: int):
  """The what-if methods: (label, method, payload bytes, simulate kwargs)."""
  p = max(1, layers // fragment_layers)
  h = inner_steps
  return [
      ("DDP, bf16 gradients", "every_step", params * 2, {}),
      (f"DiLoCo H={h}, bf16", "blocking", params * 2, {"inner_steps": h}),
      (f"DiLoCo H={h}, int8", "blocking", params * 1, {"inner_steps": h}),
      (f"Streaming H={h} P={p}, bf16", "streaming", params * 2,
       {"inner_steps": h, "fragments": p}),
      (f"Streaming H={h} P={p} tau={overlap_steps}, bf16", "streaming",
       params * 2, {"inner_steps": h, "fragments": p,
                    "overlap_steps": overlap_steps}),
      (f"Streaming H={h} P={p} tau={overlap_steps}, fp4", "streaming",
       params * 0.5, {"inner_steps": h, "fragments": p,
                      "overlap_steps": overlap_steps}),
  ]


def what_if_table(model_sizes: Sequence[float] = (1e9, 10e9, 100e9), *,
                  step_seconds: Optional[Mapping[float, float]] = None,
                  num_layers: Optional[Mapping[float, int]] = None,
                  num_replicas: int = 2, inner_steps: int = 100,
                  fragment_layers: int = 3, overlap_steps: int = 1,
                  latency_s: float = 0.0, target_utilisation: float = 0.9,
                  bandwidths_gbps: Sequence[float] = (1.0, 10.0, 100.0)
                  ) -> List[Dict[str, object]]:
  """Rows of a what-if table: bandwidth needed and utilisation per method.

  Args:
    model_sizes: parameter counts. Step time and layer count come from
      `step_seconds` / `num_layers` when given, else from `PAPER_MODELS`
      (Streaming DiLoCo Table 4: 1B, 10B, 100B).
    step_seconds, num_layers: per-size overrides.
    num_replicas: M.
    inner_steps: H for the DiLoCo variants.
    fragment_layers: layers per Streaming DiLoCo fragment (paper: 3).
    overlap_steps: τ for the overlapped Streaming variants.
    latency_s: per-hop latency.
    target_utilisation: the utilisation the "gbps_needed" column is for.
    bandwidths_gbps: bandwidths to report utilisation at.

  Returns:
    One dict per (size, method): model_params, num_layers, step_seconds,
    method (label), bytes_per_sync (peak, per replica), gbps_needed, and
    "cu@{W}" for each W in bandwidths_gbps.
  """
  step_seconds = dict(step_seconds or {})
  num_layers = dict(num_layers or {})
  rows = []
  for n in model_sizes:
    paper = PAPER_MODELS.get(float(n))
    t = step_seconds.get(n, paper[1] if paper else None)
    layers = num_layers.get(n, paper[0] if paper else None)
    check(t is not None and layers is not None,
          f"no step time / layer count for a model of {n:g} parameters: pass "
          f"step_seconds={{{n:g}: ...}} and num_layers={{{n:g}: ...}}")
    for label, method, payload, extra in _variants(
        n, layers, inner_steps, fragment_layers, overlap_steps):
      kw = dict(step_seconds=t, payload_bytes=payload,
                num_replicas=num_replicas, latency_s=latency_s,
                num_layers=layers, **extra)
      row = {
          "model_params": n, "num_layers": layers, "step_seconds": t,
          "method": label,
          "bytes_per_sync": simulate(method, bandwidth_gbps=1.0,
                                     **kw)["bytes_per_sync"],
          "gbps_needed": required_bandwidth(
              method, target_utilisation=target_utilisation, **kw),
      }
      for w in bandwidths_gbps:
        row[f"cu@{w:g}"] = simulate(method, bandwidth_gbps=w,
                                    **kw)["utilisation"]
      rows.append(row)
  return rows


def _fmt_gbps(x: float) -> str:
  if math.isinf(x):
    return "unreachable"
  return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def _fmt_params(n: float) -> str:
  return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def to_markdown(rows: Sequence[Mapping[str, object]],
                target_utilisation: float = 0.9) -> str:
  """Renders `what_if_table` rows as a markdown table."""
  cu_cols = [k for k in rows[0] if str(k).startswith("cu@")] if rows else []
  head = (["model", "layers", "step s", "method", "peak GB per sync",
           f"Gbit/s for {target_utilisation:.0%} CU"]
          + [f"CU @ {c[3:]} Gbit/s" for c in cu_cols])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * len(head)) + "|"]
  for r in rows:
    cells = [_fmt_params(r["model_params"]), str(r["num_layers"]),
             f"{r['step_seconds']:g}", str(r["method"]),
             f"{r['bytes_per_sync'] / 1e9:.3g}", _fmt_gbps(r["gbps_needed"])]
    cells += [f"{r[c]:.1%}" for c in cu_cols]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _same_grid_cell(model_gbps: float, paper_gbps: float) -> bool:
  """Whether a grid-rounded model value is the paper's grid value.

  The paper prints grid values to one decimal (and not always rounded the
  same way: 2.947 shows as 3.0, 6.251 as 6.2), so compare nearest grid cells.
  """
  if paper_gbps >= 1000:  # the paper's "1000.0+": off the grid's top
    return model_gbps > 1000
  if math.isinf(model_gbps):
    return False
  grid = np.log(PAPER_BANDWIDTH_GRID_GBPS)
  nearest = lambda x: int(np.argmin(np.abs(grid - math.log(x))))
  return nearest(model_gbps) == nearest(paper_gbps)


def table6_markdown(wire_bits_per_param: float = TABLE6_WIRE_BITS_PER_PARAM
                    ) -> str:
  """Table 6 of arXiv 2503.09799 next to this model's answers."""
  head = ["model", "method"] + [f"CU {c:.0%}: paper / model"
                                for c in TABLE6_CU_LEVELS]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * len(head)) + "|"]
  exact = total = 0
  for model, (_, _, _, rows) in TABLE6.items():
    for h, paper in rows.items():
      cells = [model, "Data-Parallel" if h == 1 else f"DiLoCo H={h}"]
      for cu, ref in zip(TABLE6_CU_LEVELS, paper):
        ours = table6_required_bandwidth(model, h, cu, wire_bits_per_param)
        on_grid = round_up_to_paper_grid(ours)
        hit = _same_grid_cell(on_grid, ref)
        exact += hit
        total += 1
        mark = "" if hit else " *"
        ref_s = "1000+" if ref >= 1000 else f"{ref:g}"
        cells.append(f"{ref_s} / {_fmt_gbps(ours)} ({_fmt_gbps(on_grid)}){mark}")
      lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"Model in brackets after rounding up to the paper's grid; "
               f"{exact} of {total} cells equal the paper's, * marks the "
               f"others.")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI: prints the what-if tables as markdown (docs/netsim.md)."""
  parser = argparse.ArgumentParser(
      prog="python -m fedjax_lab.comm.netsim",
      description="What-if tables: bandwidth vs compute utilisation for DDP, "
                  "DiLoCo and Streaming DiLoCo.")
  parser.add_argument("--replicas", type=int, default=2, help="M")
  parser.add_argument("--inner-steps", type=int, default=100, help="H")
  parser.add_argument("--overlap-steps", type=int, default=1, help="tau")
  parser.add_argument("--latency", type=float, default=0.0,
                      help="per-hop latency, seconds")
  parser.add_argument("--target", type=float, default=0.9,
                      help="target compute utilisation")
  parser.add_argument("--bandwidths", type=float, nargs="+",
                      default=[1.0, 10.0, 100.0], help="Gbit/s to report")
  args = parser.parse_args(argv)

  out = sys.stdout
  out.write("# Network what-if tables\n\n")
  out.write("Generated by `python -m fedjax_lab.comm.netsim > docs/netsim.md`"
            " (`fedjax_lab/comm/netsim.py`; model and assumptions in its "
            "docstring).\n\n")
  out.write(
      "Ring all-reduce of B bytes over M replicas: t = 2(M-1)·latency + "
      "2(M-1)/M · 8B / W. Reductions pipeline with the backward pass layer by "
      "layer (backward = 2/3 of the step); DiLoCo's sync blocks, Streaming "
      "DiLoCo sends P = layers/3 fragments, one every H/P steps, optionally "
      "overlapped with tau inner steps. Peak GB per sync is what one replica "
      "puts on the link at once (payload / P).\n\n")
  out.write(f"## What if (M = {args.replicas}, H = {args.inner_steps}, "
            f"tau = {args.overlap_steps}, latency = {args.latency:g} s)\n\n")
  out.write("Step times and layer counts of Streaming DiLoCo (arXiv "
            "2501.18512) Table 4 (6N FLOPs rule, 60% MFU). Payloads: bf16 = 2 "
            "bytes, int8 = 1 byte, fp4 = 0.5 byte per parameter (scales "
            "ignored here; `Compressor.payload_bytes` counts them).\n\n")
  rows = what_if_table(num_replicas=args.replicas,
                       inner_steps=args.inner_steps,
                       overlap_steps=args.overlap_steps,
                       latency_s=args.latency,
                       target_utilisation=args.target,
                       bandwidths_gbps=args.bandwidths)
  out.write(to_markdown(rows, args.target) + "\n\n")
  out.write("## Scaling laws for DiLoCo (arXiv 2503.09799) Table 6, "
            "reproduced\n\n")
  out.write(
      f"Gbit/s to reach a compute utilisation (CU). Paper / this model "
      f"(M = 2, no latency, layers as listed in `TABLE6`, "
      f"{TABLE6_WIRE_BITS_PER_PARAM} wire bits per parameter fitted on the "
      f"405B and 671B rows; with bf16's 16 bits every model number is 30% "
      f"higher). The 10B data-parallel and DiLoCo H = 100 cells at 90% CU "
      f"(222.3 and 13.3) are out-of-sample predictions checked by "
      f"tests/test_netsim.py.\n\n")
  out.write(table6_markdown() + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
