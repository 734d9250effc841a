"""The built-in offline corpus: the CPython standard library's `.py` sources.

Every machine with Python has it, so byte-level language modelling runs with
no download. It is exposed as a real TFDS builder (`StdlibPy`, dataset name
``stdlib_py``) prepared locally as array_record and read back with
`tfds.data_source` (no TensorFlow needed).

Subsets (TFDS builder configs):

* ``full``: every `.py` file under ``sysconfig.get_paths()['stdlib']``, minus
  site-packages and __pycache__ (1,790 files, 31.5 MB on Python 3.11).
* ``no_tests``: ``full`` without the test suites (``test/`` and any ``test``,
  ``tests`` or ``idle_test`` directory) and idlelib (674 files, 11.4 MB).
* ``small``: the non-test files of a fixed list of packages (`SMALL_PACKAGES`,
  about 2.6 MB); for unit tests and quick benchmarks.

Splits are by file, from a stable hash of the file's relative path mapped to
[0, 1): ``validation`` takes the lowest `EVAL_FRACTION` of the range (for
choosing hyperparameters), ``test`` the next `TEST_FRACTION` (for reported
numbers only), ``train`` the rest. The split does not depend on the order
files are listed in, and a file keeps its split when others are added or
removed. (Version 1.0.0 had no test split; its validation files are the same.)

The corpus changes with the Python version, so `corpus_fingerprint` (python
version, file count, bytes, sha256 over the sorted (path, content) pairs) is
recorded in the prepared dataset's metadata and should be stored with every
result.
"""

import fcntl
import functools
import hashlib
import os
import platform
import sysconfig
from typing import Dict, List, Optional, Tuple

from absl import logging
import tensorflow_datasets as tfds

DATASET_NAME = "stdlib_py"
SUBSETS = ("full", "no_tests", "small")
EVAL_FRACTION = 0.05
TEST_FRACTION = 0.05
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"
TEST_SPLIT = "test"
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT)

# Packages with distinct vocabularies (networking, parsing, concurrency, ...),
# so by_source partitions of `small` are heterogeneous. `encodings` is left
# out: its 1.4 MB of codec tables would dominate the subset.
SMALL_PACKAGES = (
    "asyncio", "collections", "concurrent", "dbm", "email", "html", "http",
    "importlib", "json", "logging", "multiprocessing", "sqlite3", "tomllib",
    "urllib", "wsgiref", "xml", "zoneinfo",
)
_PRUNED_DIRS = frozenset({"site-packages", "__pycache__"})
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


def stdlib_root() -> str:
  """The directory of the running interpreter's standard library."""
  return sysconfig.get_paths()["stdlib"]


def _is_test_or_idle(parts: Tuple[str, ...]) -> bool:
  """True for files in a test suite or idlelib (`parts` of a relative path)."""
  return parts[0] == "idlelib" or any(p in _TEST_DIRS for p in parts[:-1])


def source_name(path: str) -> str:
  """Top-level package or module of a relative path: 'email/utils.py' → 'email'."""
  top = path.split("/")[0]
  return top[:-3] if top.endswith(".py") else top


def _hash_fraction(path: str) -> float:
  """sha256 of `path` as a number in [0, 1): the same in every process and on
  every machine (not Python's salted `hash`)."""
  digest = hashlib.sha256(path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64


def split_of(path: str) -> str:
  """The split ('train', 'validation' or 'test') of the file at `path`.

  Args:
    path: a '/'-separated path relative to the stdlib root.
  """
  x = _hash_fraction(path)
  if x < EVAL_FRACTION:
    return EVAL_SPLIT
  if x < EVAL_FRACTION + TEST_FRACTION:
    return TEST_SPLIT
  return TRAIN_SPLIT


def is_eval_path(path: str) -> bool:
  """Whether the file at `path` is in the validation split (`EVAL_FRACTION`)."""
  return split_of(path) == EVAL_SPLIT


def list_files(*, subset: str = "full") -> List[str]:
  """Sorted '/'-separated relative paths of the `.py` files in `subset`.

  Args:
    subset: one of `SUBSETS`.

  Returns:
    The relative paths, sorted.

  Raises:
    ValueError: for an unknown subset.
  """
  if subset not in SUBSETS:
    raise ValueError(f"stdlib corpus: unknown subset {subset!r}; known: {SUBSETS}")
  root = stdlib_root()
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _PRUNED_DIRS]
    rel_dir = os.path.relpath(dirpath, root)
    for filename in filenames:
      if not filename.endswith(".py"):
        continue
      rel = os.path.normpath(os.path.join(rel_dir, filename))
      parts = tuple(rel.split(os.sep))
      if subset != "full" and _is_test_or_idle(parts):
        continue
      if subset == "small" and parts[0] not in SMALL_PACKAGES:
        continue
      paths.append("/".join(parts))
  return sorted(paths)


def _read(path: str) -> bytes:
  with open(os.path.join(stdlib_root(), *path.split("/")), "rb") as f:
    return f.read()


def corpus_fingerprint(*, subset: str = "full") -> Dict[str, object]:
  """Identifies the corpus this interpreter provides (store it with results).

  Reads every file (31.5 MB for `full`: well under a second) on the first
  call per subset; the installed standard library does not change while a
  process runs, so later calls reuse that result.

  Args:
    subset: one of `SUBSETS`.

  Returns:
    A JSON-serialisable dict: corpus, subset, python_version,
    python_implementation, num_files, num_bytes, num_eval_files,
    num_test_files, eval_fraction, test_fraction, and sha256 over the sorted
    (path, content) pairs (each path and content length-prefixed, so no two
    corpora hash alike by concatenation).
  """
  return dict(_fingerprint(subset))


@functools.lru_cache(maxsize=None)
def _fingerprint(subset: str) -> Dict[str, object]:
  """corpus_fingerprint, computed once per subset (callers get copies)."""
  paths = list_files(subset=subset)
  sha = hashlib.sha256()
  num_bytes = 0
  for path in paths:
    content = _read(path)
    num_bytes += len(content)
    encoded_path = path.encode("utf-8")
    sha.update(len(encoded_path).to_bytes(8, "big") + encoded_path)
    sha.update(len(content).to_bytes(8, "big") + content)
  return {
      "corpus": "cpython-stdlib-py",
      "subset": subset,
      "python_version": platform.python_version(),
      "python_implementation": platform.python_implementation(),
      "num_files": len(paths),
      "num_bytes": num_bytes,
      "num_eval_files": sum(is_eval_path(p) for p in paths),
      "num_test_files": sum(split_of(p) == TEST_SPLIT for p in paths),
      "eval_fraction": EVAL_FRACTION,
      "test_fraction": TEST_FRACTION,
      "sha256": sha.hexdigest(),
  }


class StdlibPy(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder for the standard library's `.py` files, one example per file.

  Features: 'text' (the file's raw bytes; a few test files are not UTF-8),
  'path' (relative, '/'-separated) and 'source' (top-level package or module,
  the group for by_source partitioning); all decode to `bytes`.

  Registration is skipped so that importing fedjax_lab changes no global TFDS
  state; once prepared, `tfds.data_source('stdlib_py/<subset>',
  data_dir=...)` still finds it, from the files.
  """

  VERSION = tfds.core.Version("1.1.0")
  # TFDS 4.9.10 looks up this class's source file (to find URL checksums)
  # through the `importlib_resources` backport, which it does not install on
  # Python >= 3.9. There is nothing to download, hence no checksums file.
  code_path = None
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "A test split (the next 5% of the path-hash "
                            "range); train shrinks by it."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="full", description="All .py files."),
      tfds.core.BuilderConfig(
          name="no_tests", description="Without test suites and idlelib."),
      tfds.core.BuilderConfig(
          name="small", description="Non-test files of SMALL_PACKAGES."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "path": tfds.features.Text(),
            "source": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(
            fingerprint=corpus_fingerprint(subset=self.builder_config.name)),
        homepage="https://docs.python.org/3/library/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the corpus is on this machine.
    paths = list_files(subset=self.builder_config.name)
    return {split: self._generate_examples([p for p in paths
                                            if split_of(p) == split])
            for split in SPLITS}

  def _generate_examples(self, paths):
    for path in paths:
      yield path, {"text": _read(path), "path": path, "source": source_name(path)}


def prepare_stdlib_corpus(*, data_dir: Optional[str] = None,
                          subset: str = "full") -> tfds.core.DatasetBuilder:
  """Prepares the stdlib corpus as array_record under `data_dir` (idempotent).

  The first call writes `data_dir/stdlib_py/<subset>/1.1.0` (under a second for
  `full`); later calls reuse it after checking that it was made from the same
  corpus (same fingerprint) as this interpreter's.

  Args:
    data_dir: the TFDS data directory; None means TFDS's default
      (``$TFDS_DATA_DIR`` or ~/tensorflow_datasets).
    subset: one of `SUBSETS`.

  Returns:
    The prepared builder; `builder.as_data_source()` gives random-access
    'train', 'validation' and 'test' splits.

  Raises:
    ValueError: for an unknown subset, or when `data_dir` holds a corpus
      prepared by a different Python (a different fingerprint).
  """
  if subset not in SUBSETS:
    raise ValueError(f"stdlib corpus: unknown subset {subset!r}; known: {SUBSETS}")
  # Processes of one multi-process run on one machine all prepare on start:
  # one prepares, the others wait and then reuse its files.
  dataset_dir = os.path.dirname(os.path.dirname(
      StdlibPy(config=subset, data_dir=data_dir).data_dir))
  os.makedirs(dataset_dir, exist_ok=True)
  with open(os.path.join(dataset_dir, f".{subset}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      return _prepare_locked(data_dir, subset)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _prepare_locked(data_dir: Optional[str], subset: str):
  """prepare_stdlib_corpus with the directory's lock held."""
  builder = StdlibPy(config=subset, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    stored = builder.info.metadata.get("fingerprint", {})
    current = corpus_fingerprint(subset=subset)
    if stored.get("sha256") != current["sha256"]:
      raise ValueError(
          f"stdlib corpus at {builder.data_dir} was prepared from a different "
          f"standard library (python {stored.get('python_version')}, "
          f"sha256 {stored.get('sha256')}) than this interpreter's (python "
          f"{current['python_version']}, sha256 {current['sha256']}); use "
          "another data_dir or delete that directory.")
  else:
    logging.info("Preparing stdlib corpus subset=%s in %s", subset,
                 builder.data_dir)
    builder.download_and_prepare()
  return builder
