"""The Dockerfile's stages and instructions, read without a Docker engine."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from tests.deploy.tools import REPO

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def arg(self, name: str) -> str:
        """The default of ``ARG name=value`` in this stage (quotes removed)."""
        for args in self.all("ARG"):
            key, _, value = shlex.split(args)[0].partition("=")
            if key == name:
                return value
        raise KeyError(f"stage {self.name} declares no ARG {name}")

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for args in self.all("ENV"):
            pairs |= dict(item.split("=", 1) for item in shlex.split(args))
        return pairs


def parse_stages() -> dict[str, Stage]:
    """Stages by name, each with its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            current = stages.setdefault(name.strip(), Stage(name.strip(), base.strip()))
        elif current is not None:
            current.instructions.append((keyword.upper(), args.strip()))
    return stages
