"""notebooks/quickstart.ipynb runs top to bottom (tiny: FEDJAX_LAB_SMOKE=1).

No per-cell time limit (a wall-clock assertion that fails on a loaded
machine); the whole test is bounded generously by pytest-timeout instead, so
a hung kernel still ends it.
"""

import os

import pytest

from _runner_util import REPO
from _runner_util import xla_flags

NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("FEDJAX_LAB_SMOKE", "1")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  # The notebook's workdirs (tempfile.mkdtemp) go under this test's directory.
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  monkeypatch.setenv("XLA_FLAGS", xla_flags(1))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=None, kernel_name="python3",
      resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2
  # Progress shows in the notebook (absl hides INFO there).
  streams = "".join(o.get("text", "") for o in outputs
                    if o.output_type == "stream")
  assert "ETA" in streams and "round " in streams
  assert [p.name for p in tmp_path.glob("fedjax_lab_quickstart_*")]
