"""Moorage agent service: an LLM agent behind a production HTTP shell."""

__version__ = "0.1.0"
