"""What every config section shares: the base model (unknown keys are errors) and name rules."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)
