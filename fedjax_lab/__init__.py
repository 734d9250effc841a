"""fedjax_lab: compare federated and low-communication training methods in JAX.

The public API, re-exported flat (as optax does).
"""

from fedjax_lab import distributed
from fedjax_lab import fragments
from fedjax_lab import outer
from fedjax_lab.comm import compress
from fedjax_lab.engine import DEFAULT_AXIS
from fedjax_lab.engine import Engine
from fedjax_lab.engine import replica_mesh
from fedjax_lab.engine import StreamingEngine
from fedjax_lab.engine import TrainState
from fedjax_lab.fragments import FragmentSchedule
from fedjax_lab.outer import OuterAlgorithm

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_AXIS", "Engine", "FragmentSchedule", "OuterAlgorithm",
    "StreamingEngine", "TrainState", "compress", "distributed", "fragments",
    "outer", "replica_mesh",
]
