"""A (replica × model) mesh across processes (127.0.0.1 only): 2 processes ×
4 devices, each holding 2 replica slots × 2 model devices (a global 4×2 mesh),
equal 1 process × 8 devices as a 2×4 mesh; each replica's leaves are split
over the model axis in both (min_shard_size=1 in tests/mp_worker.py)."""

import numpy as np
import pytest

from test_multiprocess import launch, load

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("algo", ["diloco", "ddp"])
def test_two_processes_2x2_each_equal_one_process_2x4(tmp_path, algo):
  rounds = 3
  launch(2, 4, f"--algo={algo}", f"--rounds={rounds}", "--model_devices=2",
         f"--out={tmp_path}/two")
  launch(1, 8, f"--algo={algo}", f"--rounds={rounds}", "--model_devices=4",
         f"--out={tmp_path}/one")
  for r in range(rounds):
    a = load(f"{tmp_path}/two/round{r}.npz")
    b = load(f"{tmp_path}/one/round{r}.npz")
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6,
                                 err_msg=f"{algo} round {r} {k}")
  first = load(f"{tmp_path}/one/round0.npz")
  last = load(f"{tmp_path}/one/round{rounds - 1}.npz")
  assert not np.allclose(first["w1"], last["w1"])
