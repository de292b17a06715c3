"""What a storage is opened with: heartbeat, retries, timeouts, the artifact folder."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StorageSettings"]


@dataclass(frozen=True)
class StorageSettings:
    heartbeat_interval: int = 60
    grace_period: int = 180
    max_retry: int = 3
    busy_timeout: float = 60.0
    connect_timeout: float = 10.0
    outage_tolerance: float = 120.0
    call_timeout: float = 30.0
    artifacts: str = ""
