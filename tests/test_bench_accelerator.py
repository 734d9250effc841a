"""bench/accelerator.py: the tiny CPU form end to end, and its helpers."""

import importlib.util
import math
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "bench", "accelerator.py")


def _load():
  spec = importlib.util.spec_from_file_location("_bench_accelerator", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


acc = _load()

# Tiny preset: d_model 32, 2 layers, seq 16, 33,088 params. Training FLOPs per
# token by hand: 6·N + 12·layers·seq·d = 198,528 + 12,288 = 210,816; per
# sequence × 16.
_TINY_PARAMS = 33_088
_TINY_FLOPS_PER_SEQ = (6 * _TINY_PARAMS + 12 * 2 * 16 * 32) * 16


@pytest.mark.parametrize("kind,tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5p", 459.0),
    ("TPU v6 lite", 918.0), ("cpu", None)])
def test_peak_tflops_by_device_kind(kind, tflops):
  assert acc.peak_tflops(kind) == tflops


def test_memory_estimate_orders_configurations():
  shape = acc.PRESETS["1b"]
  est = lambda a, m, mode: acc.estimate_bytes(shape, algorithm=a, m=m,
                                              mode=mode, batch=8)
  assert est("diloco", 4, "sequential") < est("diloco", 4, "vmap")
  assert est("diloco", 2, "vmap") < est("diloco", 4, "vmap")
  assert est("ddp", 4, "-") < est("diloco", 4, "sequential")
  # Remat keeps block inputs only: far less than every activation.
  assert (acc.estimate_bytes(shape, algorithm="ddp", m=1, mode="-", batch=8)
          < acc.estimate_bytes(shape, algorithm="ddp", m=1, mode="-",
                               batch=8, remat=False))


def test_presets_are_valid_lm_shapes():
  for name, shape in acc.PRESETS.items():
    assert shape["d_model"] % shape["num_heads"] == 0, name
    assert (shape["d_model"] // shape["num_heads"]) % 2 == 0, name
  assert acc.make_task("tiny").num_params == _TINY_PARAMS
  assert acc.make_task("tiny").flops_per_example == _TINY_FLOPS_PER_SEQ


def test_cpu_auto_choice_is_tiny():
  # CPU devices report no bytes_limit: nothing bigger is tried.
  assert acc.choose_preset(algorithms=["ddp"], replicas=[2], modes=["vmap"],
                           inner_steps=2, batch=None, dtype="bfloat16",
                           remat=True) == "tiny"


def test_fits_compiles_from_shapes_alone():
  kwargs = dict(algorithms=["ddp", "diloco"], replicas=[2],
                modes=["vmap", "sequential"], inner_steps=2, batch=None,
                dtype="bfloat16", remat=True)
  assert acc.fits("tiny", bytes_limit=2**30, **kwargs)
  assert not acc.fits("tiny", bytes_limit=2**10, **kwargs)


def test_table_formats_missing_numbers_as_na():
  nan = float("nan")
  rows = [dict(algorithm="ddp", m=2, mode="-", tokens_per_s=1000.0, mfu=nan,
               compiled_mib=1.5, device_peak_mib=nan, outer_share=nan,
               vs_ddp=1.0),
          dict(algorithm="diloco", m=2, mode="vmap", tokens_per_s=990.0,
               mfu=0.5, compiled_mib=nan, device_peak_mib=10.0,
               outer_share=0.01, vs_ddp=0.99)]
  lines = acc.format_table(rows).splitlines()
  assert len(lines) == 4
  assert lines[2] == "| ddp | 2 | - | 1,000 | n/a | 1.5 | n/a | - | 1.000x |"
  assert lines[3] == ("| diloco | 2 | vmap | 990 | 50.0% | n/a | 10 | 1.00% "
                      "| 0.990x |")


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path, capsys):
  out = tmp_path / "accelerator.md"
  m, h, b, seq = 2, 2, 2, 16
  rows = acc.main(["--preset", "tiny", "--replicas", str(m), "--inner_steps",
                   str(h), "--repeats", "2", "--peak_tflops", "1",
                   "--out", str(out)])
  assert [(r["algorithm"], r["m"], r["mode"]) for r in rows] == [
      ("ddp", 2, "-"), ("diloco", 2, "vmap"), ("diloco", 2, "sequential")]
  for r in rows:
    assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0, r
    # tokens/s and MFU are M·H·B·seq tokens and the hand-counted FLOPs per
    # the same measured round.
    assert r["tokens_per_s"] * r["seconds"] == pytest.approx(m * h * b * seq)
    assert r["mfu"] * 1e12 * r["seconds"] == pytest.approx(
        _TINY_FLOPS_PER_SEQ * m * h * b)
    assert r["compiled_mib"] > 0, r  # XLA:CPU has a memory analysis.
    assert r["compiled_rounds"] == 1, r
    assert math.isfinite(r["loss"]), r
  assert rows[0]["vs_ddp"] == 1.0 and math.isnan(rows[0]["outer_share"])
  for r in rows[1:]:
    assert 0 < r["outer_share"] and math.isfinite(r["vs_ddp"]), r
  # Twice the state (M replicas, their moments): DiLoCo needs more memory.
  assert rows[1]["compiled_mib"] > rows[0]["compiled_mib"]
  table = [line for line in out.read_text().splitlines()
           if line.startswith("| ")]
  assert len(table) == 1 + len(rows)
  assert "| diloco | 2 | sequential |" in capsys.readouterr().out
