"""Communication: outer-gradient compressors and the network simulator.

`compress` holds the `Compressor` registry (`compress.get(name, **hparams)`).
`fedjax_lab.comm.netsim` (import it by name; it is also a CLI,
`python -m fedjax_lab.comm.netsim`, which prints docs/netsim.md) estimates
wall-clock and compute utilisation from step times and byte counts.
"""

from fedjax_lab.comm import compress
from fedjax_lab.comm.compress import Compressor
from fedjax_lab.comm.compress import error_feedback

__all__ = ["Compressor", "compress", "error_feedback"]
