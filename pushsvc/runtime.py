"""What the routes share: settings, broker, hub and counters of one process."""

from __future__ import annotations

from dataclasses import dataclass

from quart import current_app

from .broker import Broker
from .config import Settings
from .hub import Hub
from .metrics import Metrics


@dataclass(slots=True)
class Runtime:
    settings: Settings
    broker: Broker
    hub: Hub
    metrics: Metrics


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["pushsvc"]
    return rt
