"""Inference engines: each runs the package's graph on a batch of canvases."""

from __future__ import annotations

from service.engines.base import BatchOutput, Engine
from service.engines.factory import create_engine

__all__ = ["BatchOutput", "Engine", "create_engine"]
