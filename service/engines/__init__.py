"""Inference engines: each runs the package's graph on a batch of canvases."""

from __future__ import annotations

from service.engines.base import BatchOutput, Engine, EngineInfo, Precision
from service.engines.factory import create_engine, engine_precision, package_graph

__all__ = ["BatchOutput", "Engine", "EngineInfo", "Precision", "create_engine", "engine_precision", "package_graph"]
