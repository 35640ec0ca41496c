"""hier_ps: a GPU-first hierarchical (SSD -> host RAM -> HBM) embedding trainer for ads and recommendation models."""

from setuptools import find_packages, setup

setup(
    name="hier_ps",
    version="0.1.0",
    description="GPU-first hierarchical embedding trainer: SSD -> host RAM -> HBM, trained pass by pass",
    # The kernels' sources (CUDA: compiled at run time by NVRTC; C: by the machine's compiler) ship inside the package
    # as hier_ps/cuda_kernels and hier_ps/cpu_kernels.
    packages=[*find_packages(include=["hier_ps", "hier_ps.*"]), "hier_ps.cuda_kernels", "hier_ps.cpu_kernels"],
    package_dir={"hier_ps.cuda_kernels": "cuda_kernels", "hier_ps.cpu_kernels": "cpu_kernels"},
    package_data={
        "hier_ps": ["configs/*.yaml"],
        "hier_ps.cuda_kernels": ["*.cu", "*.cuh"],
        "hier_ps.cpu_kernels": ["*.c", "*.h"],
    },
    python_requires=">=3.11",
    install_requires=["torch>=2.4", "numpy>=1.24", "pyarrow>=14", "pyyaml>=6", "tqdm>=4.60", "matplotlib>=3.7"],
    extras_require={
        "cuda": ["cupy-cuda13x>=14"],  # CUDA 13 machines (PyTorch cu13); on CUDA 12: cupy-cuda12x
        "bench": ["rocksdict>=0.3", "torchrec==1.8.0", "fbgemm-gpu-cpu==1.8.0"],
        "dev": ["pytest>=8", "hypothesis>=6", "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["hier-ps=hier_ps.cli:main"]},
)
