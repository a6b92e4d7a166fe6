"""A model's version policy (``<repository>/<name>/policy.json``), as Triton's: which of its versions to serve.

One of ``{"latest": N}`` (the N highest), ``{"all": true}`` or ``{"specific": [1, 3]}``; without the file, the
latest one.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, model_validator

from service.errors import LoadFailed

POLICY_FILE = "policy.json"


def version_order(version: str) -> tuple[int, str]:
    """Versions sort as numbers ("10" after "9"); a package of DETECTOR_MODEL_DIR may carry a version that is not one."""
    return (int(version), version) if version.isdigit() else (-1, version)


class VersionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    latest: PositiveInt | None = None
    all: bool = False
    specific: list[PositiveInt] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> VersionPolicy:
        given = [rule for rule, value in (("latest", self.latest), ("all", self.all or None), ("specific", self.specific)) if value]
        if len(given) != 1:
            raise ValueError(f'give exactly one of {{"latest": N}}, {{"all": true}} or {{"specific": [versions]}}; got {given or "none"}')
        return self

    def select(self, name: str, versions: list[str]) -> list[str]:
        """The versions this policy serves, lowest first; LoadFailed if it names versions the model lacks, or finds none."""
        ordered = sorted(versions, key=version_order)
        if self.specific is not None:
            missing = sorted(set(self.specific) - {int(v) for v in ordered})
            if missing:
                raise LoadFailed(f"model {name!r}: its policy asks for version(s) {missing}, which it does not have (it has {ordered})")
            picked = [v for v in ordered if int(v) in self.specific]
        else:
            picked = ordered if self.all else ordered[-(self.latest or 1) :]
        if not picked:
            raise LoadFailed(f"model {name!r} has no version directory (<name>/<positive integer>/)")
        return picked


LATEST_ONE = VersionPolicy(latest=1)


def read_policy(model: Path) -> VersionPolicy:
    """The policy in ``model``/policy.json, or the latest one; LoadFailed naming the file when it is not a policy."""
    path = model / POLICY_FILE
    if not path.is_file():
        return LATEST_ONE
    try:
        return VersionPolicy.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as error:
        raise LoadFailed(f"{path} is not a version policy: {error}") from error
