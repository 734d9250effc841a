"""notebooks/quickstart.ipynb's install cell chooses the right action.

The cell's source is executed here as the notebook would (outside Colab, or
with a fake `google.colab`), with pip and git replaced by a recorder: nothing
is installed or cloned.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types
import zipfile

import pytest

from _runner_util import REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def _install_cell():
  with open(NOTEBOOK, encoding="utf-8") as f:
    cells = json.load(f)["cells"]
  code = [c for c in cells if c["cell_type"] == "code"]
  return "".join(code[0]["source"])


def _checkout(path):
  (path / "fedjax_lab").mkdir(parents=True)
  (path / "setup.py").write_text("")
  (path / "notebooks").mkdir()
  return path


@pytest.fixture
def cell(monkeypatch):
  """Runs the install cell: (its printed line, the commands it ran)."""
  calls = []

  def record(cmd, *args, **kwargs):
    calls.append(list(cmd))
    if cmd[:2] == ["git", "clone"]:  # What the clone would leave.
      _checkout(pathlib.Path(cmd[-1]))
    return 0

  monkeypatch.setattr(subprocess, "check_call", record)
  monkeypatch.setattr(sys, "path", list(sys.path))  # The cell may prepend.
  monkeypatch.chdir(os.getcwd())  # Restored after; the cell may chdir.
  monkeypatch.delitem(sys.modules, "google.colab", raising=False)
  monkeypatch.delenv("FEDJAX_LAB_SOURCE", raising=False)
  source = _install_cell()

  def run(capsys, *, source_var="", installed=False):
    monkeypatch.setenv("FEDJAX_LAB_SOURCE", source_var)
    if not installed:
      real = importlib.util.find_spec
      monkeypatch.setattr(
          importlib.util, "find_spec",
          lambda name, *a: None if name == "fedjax_lab" else real(name, *a))
    exec(compile(source, "quickstart.ipynb[install]", "exec"), {})  # pylint: disable=exec-used
    return capsys.readouterr().out.strip().splitlines()[-1], calls

  return run


def _pip(*args):
  return [sys.executable, "-m", "pip", "install", "--quiet", *args]


def test_cell_defines_the_source_variable_empty():
  assert 'FEDJAX_LAB_SOURCE = ""' in _install_cell()
  assert "github.com/fedjax-lab" not in _install_cell()  # No placeholder URL.


def test_in_a_checkout_already_importable_does_nothing(cell, capsys):
  os.chdir(os.path.join(REPO, "notebooks"))  # As the suite runs the notebook.
  line, calls = cell(capsys, installed=True)
  assert calls == []
  assert "already importable" in line
  assert os.path.realpath(os.getcwd()) == os.path.realpath(
      os.path.join(REPO, "notebooks"))


def test_in_a_checkout_not_installed_installs_it_editable(cell, capsys,
                                                          tmp_path):
  repo = _checkout(tmp_path / "repo")
  os.chdir(repo / "notebooks")
  line, calls = cell(capsys)
  assert calls == [_pip("-e", str(repo))]
  assert line == f"fedjax_lab: pip install -e {repo}"
  assert sys.path[0] == str(repo)
  assert os.getcwd() == str(repo / "notebooks")  # Already inside: stays.


def test_source_a_checkout_elsewhere_installs_it_and_enters_it(cell, capsys,
                                                               tmp_path):
  drive = _checkout(tmp_path / "drive" / "fedjax_lab")
  os.chdir(_mkdir(tmp_path / "content"))
  line, calls = cell(capsys, source_var=str(drive))
  assert calls == [_pip("-e", str(drive))]
  assert os.getcwd() == str(drive)  # The next cell finds configs/ here.
  assert line.endswith(str(drive))


def test_source_a_wheel_installs_it(cell, capsys, tmp_path):
  wheel = tmp_path / "fedjax_lab-0.1.0-py3-none-any.whl"
  wheel.write_bytes(b"PK")
  os.chdir(tmp_path)
  line, calls = cell(capsys, source_var=str(wheel))
  assert calls == [_pip(str(wheel))]
  assert "no configs/" in line


def test_source_a_git_url_clones_then_installs(cell, capsys, tmp_path):
  os.chdir(tmp_path)
  url = "https://example.org/someone/fedjax_lab.git"
  _, calls = cell(capsys, source_var=url)
  dest = str(tmp_path / "fedjax_lab_src")
  assert calls == [["git", "clone", "--depth", "1", url, dest],
                   _pip("-e", dest)]


def test_source_a_zip_of_a_checkout_is_extracted_and_installed(
    cell, capsys, tmp_path):
  archive = tmp_path / "fedjax_lab-main.zip"
  with zipfile.ZipFile(archive, "w") as z:  # As GitHub's "Download ZIP".
    z.writestr("fedjax_lab-main/setup.py", "")
    z.writestr("fedjax_lab-main/fedjax_lab/__init__.py", "")
  os.chdir(_mkdir(tmp_path / "content"))
  _, calls = cell(capsys, source_var=str(archive))
  inner = str(tmp_path / "content" / "fedjax_lab_src" / "fedjax_lab-main")
  assert calls == [_pip("-e", inner)]


def test_a_missing_source_fails_in_one_line(cell, capsys, tmp_path):
  os.chdir(tmp_path)
  with pytest.raises(Exception, match="FEDJAX_LAB_SOURCE=") as e:
    cell(capsys, source_var=str(tmp_path / "nowhere.whl"))
  assert type(e.value).__name__ == "InstallError"
  assert e.value._render_traceback_() == [f"InstallError: {e.value}"]  # pylint: disable=protected-access
  assert "\n" not in str(e.value)


def test_nothing_there_outside_colab_says_what_to_do(cell, capsys, tmp_path):
  os.chdir(tmp_path)
  with pytest.raises(Exception, match="set FEDJAX_LAB_SOURCE") as e:
    cell(capsys)
  assert "\n" not in str(e.value)


def _fake_colab(monkeypatch, uploads):
  colab = types.ModuleType("google.colab")
  colab.files = types.SimpleNamespace(upload=lambda: dict(uploads))
  monkeypatch.setitem(sys.modules, "google.colab", colab)


def test_on_colab_with_nothing_set_an_uploaded_wheel_is_installed(
    cell, capsys, monkeypatch, tmp_path):
  os.chdir(tmp_path)
  _fake_colab(monkeypatch, {"fedjax_lab-0.1.0-py3-none-any.whl": b"PK"})
  _, calls = cell(capsys)
  wheel = tmp_path / "fedjax_lab-0.1.0-py3-none-any.whl"
  assert wheel.read_bytes() == b"PK"  # Written where upload() puts it.
  assert calls == [_pip(str(wheel))]


def test_on_colab_an_upload_of_something_else_says_what_to_do(
    cell, capsys, monkeypatch, tmp_path):
  os.chdir(tmp_path)
  _fake_colab(monkeypatch, {"notes.txt": b"hi"})
  with pytest.raises(Exception, match="set FEDJAX_LAB_SOURCE"):
    cell(capsys)


def _mkdir(path):
  path.mkdir(parents=True)
  return path
