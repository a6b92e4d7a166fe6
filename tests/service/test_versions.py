"""A model's version policy (service/versions.py): which of its versions the repository serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import LoadFailed
from service.versions import VersionPolicy, read_policy
from tests.service.helpers import set_policy


@pytest.mark.parametrize(
    ("policy", "picked"), [(None, ["10"]), ({"latest": 2}, ["9", "10"]), ({"all": True}, ["1", "9", "10"]), ({"specific": [1]}, ["1"])]
)
def test_a_version_policy_picks_versions(tmp_path: Path, policy: dict | None, picked: list[str]) -> None:
    set_policy(tmp_path, ".", policy)
    assert read_policy(tmp_path).select("m", ["9", "1", "10"]) == picked


@pytest.mark.parametrize("text", ['{"latest": 0}', '{"latest": 1, "all": true}', "{}", '{"newest": 1}', "latest: 1"])
def test_a_bad_policy_file_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    (tmp_path / "policy.json").write_text(text)
    with pytest.raises(LoadFailed, match=r"policy\.json is not a version policy"):
        read_policy(tmp_path)


def test_a_policy_naming_a_missing_version_is_refused() -> None:
    with pytest.raises(LoadFailed, match=r"version\(s\) \[3\]"):
        VersionPolicy(specific=[1, 3]).select("m", ["1", "2"])
