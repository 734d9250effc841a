"""fedjax_lab: federated and low-communication (DiLoCo-style) training in JAX."""

import setuptools

setuptools.setup(
    name="fedjax_lab",
    version="0.1.0",
    description=(
        "A JAX/Flax framework for comparing federated and low-communication "
        "(DiLoCo-style) training methods."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["fedjax_lab", "fedjax_lab.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-datasets>=4.9.6",
        "absl-py>=2.0",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "array-record>=0.7",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",
            "nbmake>=1.5",
            "ruff>=0.6",
        ],
        # tools/mutation.py (mutation testing, not run in CI; docs/mutation.md).
        # mutmut 2.x: a fresh process per mutant (3.x forks a traced JAX process).
        "mutation": [
            "mutmut==2.5.1",
        ],
    },
)
