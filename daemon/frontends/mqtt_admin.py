"""The administrator's model command over MQTT: `<base>/command/model` (docs/MODELS.md).

Payload: a model name (`gemma3-270m`), or JSON `{"load": "gemma3-270m"}` or `{"unload": true}`.
The swap runs on the model slot's own thread (never on paho's network thread); its outcome,
refused or done, is in the retained status message (`model_state`, `model_swap`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

import structlog

from daemon.slot import ModelSlot, SwapError

log = structlog.get_logger(__name__)

# How long the command's own thread waits on a load before it stops watching (the swap goes on).
_WAIT_S = 600.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def parse(payload: bytes) -> tuple[str, str | None]:
    """("load", name) or ("unload", None); ValueError for anything else."""
    text = payload.decode("utf-8", errors="replace").strip()
    if not text:
        raise ValueError("an empty command")
    if _NAME.fullmatch(text):
        return "load", text.removesuffix(":latest")
    if not text.startswith("{"):
        raise ValueError("not a model name (letters, digits and . _ - :) nor JSON")
    body: Any = json.loads(text)
    if isinstance(body, dict) and body.get("unload") is True and "load" not in body:
        return "unload", None
    name = body.get("load") if isinstance(body, dict) else None
    if isinstance(name, str) and _NAME.fullmatch(name.strip()):
        return "load", name.strip().removesuffix(":latest")
    raise ValueError('expected a model name, {"load": NAME} or {"unload": true}')


class ModelCommand:
    """Hears the command topic and hands the work to the slot; `refresh` republishes status."""

    def __init__(self, slot: ModelSlot, refresh: Callable[[], None]):
        self._slot = slot
        self._refresh = refresh

    def on_message(self, _topic: str, payload: bytes) -> None:
        try:
            action, name = parse(payload)
        except ValueError as err:
            log.warning("model_command_ignored", reason=str(err))
            return
        log.info("model_command", action=action, model=name)
        threading.Thread(
            target=self._run, args=(action, name), name="model-cmd", daemon=True
        ).start()

    def _run(self, action: str, name: str | None) -> None:
        try:
            if action == "unload":
                self._slot.unload()
            else:
                assert name is not None
                self._slot.want(name, _WAIT_S)
        except SwapError as err:
            log.warning("model_command_failed", action=action, model=name, error=err.message)
            self._slot.last_swap = {"to": name or "nothing", "seconds": None, "error": err.message}
            self._refresh()
