"""pcgcvae: a learned sparse approximate inverse (GCVAE) preconditioner for PETSc and Firedrake."""

from pathlib import Path

from setuptools import find_packages, setup

version: dict = {}
exec((Path(__file__).parent / "pcgcvae" / "_version.py").read_text(), version)

setup(
    name="pcgcvae",
    version=version["__version__"],
    description="Learned sparse approximate inverse preconditioners (graph-conditioned VAE) for PETSc",
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pcgcvae", "pcgcvae.*"]),
    package_data={"pcgcvae": ["models/*.npz", "models/*.pt", "models/*.md"]},
    python_requires=">=3.10",
    # the run time (the preconditioners, torch-free inference of the .npz models)
    install_requires=[
        "numpy",
        "scipy",
        "petsc4py==3.26.0",
        "mpi4py",
    ],
    extras_require={
        "firedrake": ["firedrake==2026.10.0"],
        # training, evaluation, .pt checkpoints and their export (python -m pcgcvae.training.export)
        "train": ["torch==2.13.0", "torch_geometric>=2.8,<2.9", "matplotlib", "tqdm"],
        "test": ["pytest", "ruff", "torch==2.13.0", "torch_geometric>=2.8,<2.9", "matplotlib", "tqdm"],
    },
    entry_points={
        "console_scripts": [
            "pcgcvae-dataset=pcgcvae.training.dataset:main",
            "pcgcvae-train=pcgcvae.training.train:main",
        ]
    },
)
