"""Moorage agent service: an LLM agent behind a production HTTP shell."""
