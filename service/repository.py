"""The model repository: the model versions being served, each its own Detector (batcher, metrics); loads and unloads.

Layout, as Triton's: ``<root>/<name>/<version>/`` model packages, version directories named by positive integers
(others are ignored), and an optional ``<root>/<name>/policy.json`` choosing the versions to serve
(service/versions.py; the latest one by default). ``DETECTOR_MODEL_DIR`` is a repository of one: its manifest's
name and version. Requests name a model and a version (:meth:`ModelRepository.resolve`); no name means the default
model, no version the highest loaded one.

Model control follows Triton's explicit mode. A load builds and warms every version the policy picks before any
takes traffic, then swaps them in at once and retires the copies they replace; if one fails, none is swapped and
what was serving stays. An unload takes the versions out first (new requests no longer find them), then drains
them: each request that found a version holds a lease on it (Detector.lease), and close() waits for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from service.detector import Detector
from service.errors import ControlDisabled, LoadFailed, ModelNotFound, NotReady, TooManyVersions
from service.manifest import read_manifest
from service.metrics import Metrics
from service.settings import Settings
from service.versions import read_policy, version_order

log = logging.getLogger(__name__)
Packages = dict[str, dict[str, Path]]  # model name -> version -> package directory
Key = tuple[str, str]  # (model name, version)


class IndexEntry(BaseModel):
    """One version in the repository index (Triton's RepositoryIndex): READY when it takes traffic."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = settings.model_repository
        self._loaded: dict[Key, Detector] = {}
        self._reasons: dict[Key, str] = {}  # why a version is not served: unloaded, or its load failed
        self._known: Packages = {}  # the last scan of the repository
        self._lock = asyncio.Lock()  # one control operation at a time
        self.started = False
        self._draining = False

    # What the repository holds

    def _scan(self) -> Packages:
        if self.root is None:
            manifest = read_manifest(self.settings.model_dir)
            return {manifest.name: {manifest.version: self.settings.model_dir}}
        found: Packages = {}
        for model in sorted(self.root.iterdir()):
            if model.is_dir() and not model.name.startswith("."):
                found[model.name] = {str(int(d.name)): d for d in model.iterdir() if d.is_dir() and d.name.isdigit() and int(d.name) > 0}
        return found

    def _wanted(self, name: str) -> dict[str, Path]:
        """The versions of ``name`` its policy picks, with their packages (LoadFailed for a bad policy)."""
        versions = self._known[name]
        policy = read_policy(self.root / name) if self.root is not None else None
        picked = policy.select(name, list(versions)) if policy is not None else list(versions)
        return {version: versions[version] for version in picked}

    async def _rescan(self) -> None:
        try:
            self._known = await asyncio.to_thread(self._scan)
        except OSError as error:
            raise LoadFailed(f"the model repository cannot be read: {error}") from error

    # Start and stop (the app's lifespan)

    async def start(self) -> None:
        """Loads the models the settings ask for (DETECTOR_LOAD_MODELS); the server is ready once they all are."""
        await self._rescan()
        names = self.settings.load_model_list or sorted(self._known)
        missing = [name for name in [*names, self.settings.default_model] if name is not None and name not in self._known]
        if missing or not names:
            where = self.root or self.settings.model_dir
            raise LoadFailed(f"{where} has no model {', '.join(map(repr, missing))}; it holds {sorted(self._known)} (DETECTOR_LOAD_MODELS)")
        async with self._lock:
            plans = {name: await asyncio.to_thread(self._wanted, name) for name in names}
            self._check_cap(sum(len(plan) for plan in plans.values()))
            for name, plan in plans.items():
                await self._swap_in(name, plan)
        self.started = True

    def begin_drain(self) -> None:
        self._draining = True
        for detector in self._loaded.values():
            detector.begin_drain()

    async def close(self) -> None:
        self.begin_drain()
        async with self._lock:
            retired = list(self._loaded.values())
            self._loaded.clear()
            await self._retire(retired, forget=False)

    # Serving

    def resolve(self, name: str | None, version: str | None) -> Detector:
        """The detector of ``name`` (None, '' or 'default': the default model) at ``version`` (None or '': the highest
        loaded). ModelNotFound (404) for a model or version that is not served, with the reason."""
        if not self._loaded and (self._draining or not self.started):
            raise NotReady("the server is shutting down" if self._draining else "the model is still loading")
        name = self._model_name(name)
        if not version:
            versions = [v for n, v in self._loaded if n == name]
            if not versions:
                raise self._not_served(name, None)
            version = max(versions, key=version_order)
        detector = self._loaded.get((name, version))
        if detector is None:
            raise self._not_served(name, version)
        return detector

    def _served_names(self) -> list[str]:
        return sorted(set(self._known) | {n for n, _ in self._loaded})

    def _model_name(self, name: str | None) -> str:
        if name and name != "default":
            return name  # the common case, on every request: no look at the repository
        served = self._served_names()
        if name and "default" in served:
            return name
        if self.settings.default_model is not None:
            return self.settings.default_model
        if len(served) == 1:
            return served[0]
        raise ModelNotFound(f"this server serves several models ({', '.join(served)}) and none is the default: name one")

    def _not_served(self, name: str, version: str | None) -> ModelNotFound:
        serving = sorted((v for n, v in self._loaded if n == name), key=version_order)
        if name not in self._known and not serving:
            return ModelNotFound(
                f"unknown model {name!r}; this server serves {', '.join(map(repr, self._served_names()))} (the default also as 'default')"
            )
        now = f"it serves version(s) {', '.join(serving)}" if serving else "no version of it is loaded"
        if version is None or version not in self._known.get(name, {}):
            return ModelNotFound(f"model {name!r} has no version {version!r} loaded; {now}" if version else f"model {name!r}: {now}")
        reason = self._reasons.get((name, version), "not loaded")
        return ModelNotFound(f"model {name!r} version {version} is not loaded ({reason}); {now}")

    @property
    def ready(self) -> bool:
        return self.started and not self._draining and bool(self._loaded) and all(d.ready for d in self._loaded.values())

    def unready_reason(self) -> str:
        if self._draining:
            return "the server is draining"
        unready = [(key, d) for key, d in sorted(self._loaded.items()) if not d.ready]
        if self.started and unready:
            (name, version), detector = unready[0]
            return f"model {name!r} version {version}: {detector.unready_reason()}"
        return "the model is loading" if not self.started else "no model is loaded"

    def version_problem(self, name: str, version: str | None) -> str | None:
        """Why this version (None: the model's highest loaded one) takes no traffic, or None when it does; ModelNotFound
        for a model or version the repository does not hold."""
        if self._draining:
            return "the server is draining"
        try:
            detector = self.resolve(name, version)
        except NotReady:
            return "the model is loading"  # as /health/ready says it
        except ModelNotFound as error:
            known = self._known.get(self._model_name(name), {})
            if known and (not version or version in known):
                return error.detail  # held by the repository, not loaded: not ready rather than unknown
            raise
        return None if detector.ready else detector.unready_reason()

    async def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every version in the repository and every loaded one, with its state (Triton's repository index)."""
        await self._rescan()
        keys = {(n, v) for n, versions in self._known.items() for v in versions} | set(self._loaded)
        entries = []
        for name, version in sorted(keys, key=lambda key: (key[0], version_order(key[1]))):
            detector = self._loaded.get((name, version))
            if detector is not None and detector.ready:
                entries.append(IndexEntry(name=name, version=version, state="READY", reason=""))
            elif not ready_only:
                reason = detector.unready_reason() if detector is not None else self._reasons.get((name, version), "not loaded")
                entries.append(IndexEntry(name=name, version=version, state="UNAVAILABLE", reason=reason))
        return entries

    # Model control

    def _check_control(self) -> None:
        if self.settings.model_control != "explicit":
            raise ControlDisabled("model control is off: start the server with DETECTOR_MODEL_CONTROL=explicit to load and unload models")

    def _check_cap(self, count: int) -> None:
        if count > self.settings.max_loaded_versions:
            raise TooManyVersions(
                f"serving {count} model versions would pass the limit of {self.settings.max_loaded_versions} "
                "(DETECTOR_MAX_LOADED_VERSIONS); unload a model first"
            )

    async def load(self, name: str) -> None:
        """Loads (or reloads) the versions of ``name`` its policy picks, and unloads its versions the policy dropped."""
        self._check_control()
        async with self._lock:
            await self._rescan()
            if name not in self._known:
                raise ModelNotFound(f"the repository has no model {name!r}; it holds {sorted(self._known)}")
            plan = await asyncio.to_thread(self._wanted, name)
            self._check_cap(sum(1 for n, _ in self._loaded if n != name) + len(plan))
            await self._swap_in(name, plan)

    async def unload(self, name: str) -> None:
        """Takes every version of ``name`` out of service, then drains them; a model not loaded is left as it is."""
        self._check_control()
        async with self._lock:
            versions = [v for n, v in self._loaded if n == name]
            if not versions and name not in self._known:
                raise ModelNotFound(f"the repository has no model {name!r}; it holds {sorted(self._known)}")
            retired = [self._loaded.pop((name, v)) for v in versions]
            self._reasons.update({(name, v): "unloaded" for v in versions})
            await self._retire(retired, forget=True)
            log.info("unloaded", extra={"model": name, "versions": versions})

    async def _swap_in(self, name: str, plan: dict[str, Path]) -> None:
        """Builds and warms every version of ``plan``, then puts them in service at once and retires what they replace."""
        built: dict[str, Detector] = {}
        try:
            for version, package in plan.items():
                built[version] = await self._build(name, version, package)
        except BaseException:
            await self._retire(built.values(), forget=False)  # none took traffic; the versions serving stay as they were
            raise
        # No await from here to the retirement: a request resolves either the old set or the new one, never a mix.
        replaced = [self._loaded.pop((n, v)) for n, v in list(self._loaded) if n == name]
        for version, detector in built.items():
            self._loaded[(name, version)] = detector
            self._reasons.pop((name, version), None)
            detector.publish_metrics()
        dropped = [d for d in replaced if d.manifest.version not in built]
        self._reasons.update({(name, d.manifest.version): "unloaded: its version policy no longer picks it" for d in dropped})
        await self._retire([d for d in replaced if d.manifest.version in built], forget=False)
        await self._retire(dropped, forget=True)
        log.info("loaded", extra={"model": name, "versions": list(built)})

    async def _build(self, name: str, version: str, package: Path) -> Detector:
        settings = self.settings.model_copy(update={"model_dir": package})
        try:
            detector = await asyncio.to_thread(self._open, settings, name, version)
        except Exception as error:
            raise self._failed(name, version, error) from error
        try:
            await detector.start()  # the warm-up: the version takes no traffic before it has run a batch
        except Exception as error:
            await detector.close(grace_s=0)
            raise self._failed(name, version, error) from error
        return detector

    def _open(self, settings: Settings, name: str, version: str) -> Detector:
        manifest = read_manifest(settings.model_dir)
        if self.root is not None and (manifest.name, manifest.version) != (name, version):
            raise LoadFailed(
                f"{settings.model_dir}/model.json names model {manifest.name!r} version {manifest.version!r}, but its directory "
                f"says {name!r} version {version}: export it with --name {name} --version {version}"
            )
        return Detector.load(settings, self.metrics.model(name, version))

    def _failed(self, name: str, version: str, error: Exception) -> LoadFailed:
        reason = error.detail if isinstance(error, LoadFailed) else f"{type(error).__name__}: {error}"
        self._reasons[(name, version)] = f"load failed: {reason}"  # shown by the index while the version is not served
        return LoadFailed(f"model {name!r} version {version} failed to load, and what was serving is untouched: {reason}")

    async def _retire(self, detectors: Iterable[Detector], forget: bool) -> None:
        """Drains and closes detectors no request can resolve any more; ``forget`` drops their gauges (an unload)."""
        detectors = list(detectors)
        await asyncio.gather(*(detector.close() for detector in detectors))
        if forget:
            for detector in detectors:
                detector.metrics.forget(detector.engine.describe().provider)
