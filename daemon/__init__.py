"""edgellm: a local LLM daemon answering prompts over MQTT."""

__version__ = "0.1.0"
