"""Installs tfrs-pipeline with the versions this stack is known to work with.

ScaNN 1.4.2 ships TensorFlow ops compiled for TensorFlow 2.20, so TensorFlow, tf-keras and the
serving API are pinned to the 2.20 line; a newer TensorFlow would fail to load the ScaNN ops.
"""
from setuptools import find_packages, setup

setup(
    name="tfrs-pipeline",
    version="0.1.0",
    description="Two-stage TFRS recommenders (retrieval, ranking, sessions) served by TF Serving",
    packages=find_packages(include=["tfrs_pipeline", "tfrs_pipeline.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        "tensorflow~=2.20.0",
        "tf-keras~=2.20.0",
        "tensorflow-recommenders==0.7.7",
        "scann[tf]==1.4.2",
        "tensorflow-datasets>=4.9,<5",
        "tensorflow-serving-api~=2.20.0",
        "grpcio>=1.60",
        "numpy>=1.26",
        "pandas>=2.0",
        "pyarrow>=14",  # own data as Parquet
        "pyyaml>=6",  # own data's dataset.yaml
        # The online feature store (embedded SQLite by default; the redis extra for production's Redis).
        # Feast caps pandas below 3, so pandas resolves to 2.x beside it.
        "feast[redis]==0.67.*",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Scale-out paths: Beam preprocessing (DirectRunner here; Dataflow/Flink/Spark by flag) and
        # the Faiss peers of the ANN benchmark. Both install beside TF 2.20 (protobuf resolves to 6.x).
        "scale": ["apache-beam==2.77.*", "google-crc32c>=1.5", "faiss-cpu>=1.8", "pyyaml>=6", "jsonschema>=4"],
        "notebooks": ["nbformat>=5", "nbclient>=0.10", "ipykernel>=6"],
        "test": [
            "pytest>=8", "ruff~=0.17.0",  # the lint step of .ci/run (ruff.toml); a new minor may sort imports anew
            "pytest-timeout==2.4.0",  # --timeout in .ci/run: a hung server fails its test instead of hanging CI
            "apache-beam==2.77.*", "google-crc32c>=1.5", "faiss-cpu>=1.8", "pyyaml>=6", "jsonschema>=4",
            "nbformat>=5", "nbclient>=0.10", "ipykernel>=6",
        ],
    },
    entry_points={
        "console_scripts": [
            "tfrs-pipeline-train=tfrs_pipeline.train:main",
            "tfrs-model-server=tfrs_pipeline.serving.server:main",
            "tfrs-pipeline-recommend=tfrs_pipeline.recommend:main",
        ],
    },
)
