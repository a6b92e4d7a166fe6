"""Inference engines: each runs the package's graph on a batch of canvases."""

from __future__ import annotations

from service.engines.base import BatchOutput, Engine, EngineInfo
from service.engines.factory import create_engine

__all__ = ["BatchOutput", "Engine", "EngineInfo", "create_engine"]
