"""The JSON Schema of the webhook events, as shipped in this package (``events.schema.json``)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def event_schema() -> dict[str, Any]:
    """The schema (JSON Schema 2020-12) every webhook body the worker sends is valid against."""
    text = resources.files("tts_client").joinpath("events.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
