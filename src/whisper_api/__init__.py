"""whisper-api: self-hosted speech-to-text for long audio."""

__version__ = "0.1.0"
