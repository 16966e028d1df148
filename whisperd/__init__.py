"""whisperd: a supervised pool of Whisper workers that transcribe jobs from RabbitMQ."""

__version__ = "0.1.0"
