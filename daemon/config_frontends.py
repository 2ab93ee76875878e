"""Config sections of fleet mode and of the front doors beside MQTT (HTTP, Home Assistant,
Wyoming)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, IPvAnyNetwork, SecretStr

from daemon.config_base import NODE_ID as _NODE_ID
from daemon.config_base import Section as _Section

ENV_HTTP_KEY = "EDGELLM_HTTP_API_KEY"


class FleetConfig(_Section):
    """Fleet mode: several nodes serve one shared request topic (docs/FLEET.md). MQTT v5 only."""

    group: Annotated[str, Field(pattern=_NODE_ID.pattern)] | None = Field(
        None, description="Also take requests of <prefix>/fleet/<group>/request; None: off."
    )
    start_within_s: float = Field(
        1.0, ge=0, le=3600, description="Take a fleet request only if it can start this soon."
    )
    max_hops: int = Field(
        3, ge=0, le=32, description="Hand-backs after which any node takes a fleet request."
    )


class HomeAssistantConfig(_Section):
    discovery: bool = Field(
        True, description="Announce the node to Home Assistant; false removes the announcement."
    )
    prefix: str = Field("homeassistant", pattern=r"^[^+#\x00]+$", description="Its MQTT prefix.")


class HttpConfig(_Section):
    """The ollama- and OpenAI-compatible HTTP API (docs/HTTP.md)."""

    enabled: bool = Field(True, description="Serve the HTTP API; a taken port only logs.")
    bind: str = Field("127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(11434, ge=1, le=65535, description="TCP port (ollama's own by default).")
    api_key: SecretStr | None = Field(
        None, description=f"Bearer key every request must carry; prefer ${ENV_HTTP_KEY}."
    )
    api_key_file: Path | None = Field(None, description="File whose first line is the key.")
    clients_allowed: list[IPvAnyNetwork] | None = Field(
        None, description="Client addresses (CIDRs) that may connect; None: any."
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve a bind beyond loopback with neither api_key nor clients_allowed "
        "(anyone who can reach the port may ask); off: such a config is refused.",
    )
    max_connections: int = Field(
        64, ge=2, le=4096, description="Open connections (one thread each) at most."
    )
    wait_timeout_s: float = Field(
        15.0, gt=0, le=600, description="A request's line and headers (or keep-alive idle)."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=600, description="A body in all, and each write of a reply (408 after)."
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body accepted (128 tools and 256 messages fit).",
    )
    allow_pull: bool = Field(
        True,
        description="Let POST /api/pull download catalog models (never a URL) into model.dir; "
        "false: such a pull is refused with 403.",
    )


class WyomingConfig(_Section):
    """The Wyoming `handle` service (frontends/wyoming_handle.py)."""

    enabled: bool = Field(True, description="Serve the Wyoming protocol on host:port.")
    host: str = Field("127.0.0.1", min_length=1, description="Listen address; 0.0.0.0: the LAN.")
    port: int = Field(10700, ge=1, le=65535, description="TCP port; taken: run without Wyoming.")
    languages: list[str] = Field(["en"], min_length=1, description="Languages `info` lists.")
    streaming: bool = Field(True, description="handled-chunk per sentence before `handled`.")
