"""The subset of ``kustomize build`` that deploy/k8s uses, for the tests: no kustomize binary is packaged
on PyPI, Debian or npm.

Supported: ``resources`` (files, and directories holding a kustomization.yaml), ``images`` (newName,
newTag) and ``patches`` given by ``path`` as strategic merge patches, their target named by the patch's
apiVersion, kind and metadata.name. Anything else in a kustomization raises, so that a new feature of
the manifests cannot pass untested.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.deploy.tools import load_yaml_all

Manifest = dict[str, Any]

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}
# Strategic merge keys of the lists the manifests patch (from the Kubernetes API's patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


class KustomizeError(ValueError):
    pass


def build(directory: Path) -> list[Manifest]:
    """The manifests of the kustomization in ``directory``, as ``kustomize build`` would write them."""
    kustomization_file = directory / "kustomization.yaml"
    kustomization = load_yaml_all(kustomization_file)[0]
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{kustomization_file}: {sorted(unknown)} not supported by tests/deploy/kustomize.py")
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        manifests += build(path) if path.is_dir() else load_yaml_all(path)
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{kustomization_file}: only patches given by path are supported, got {patch_entry}")
        _apply_patch(manifests, load_yaml_all(directory / patch_entry["path"])[0], directory / patch_entry["path"])
    for image in kustomization.get("images", []):
        _set_image(manifests, image)
    return manifests


def _apply_patch(manifests: list[Manifest], patch: Manifest, source: Path) -> None:
    key = (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])
    targets = [m for m in manifests if (m["apiVersion"], m["kind"], m["metadata"]["name"]) == key]
    if len(targets) != 1:
        raise KustomizeError(f"{source}: patch target {key} matches {len(targets)} resources")
    merged = merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def merge(base: Any, patch: Any, field: str = "") -> Any:
    """A strategic merge patch: maps merge, lists with a merge key merge by it, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(k.startswith("$") for k in patch):
            raise KustomizeError(f"patch directives {[k for k in patch if k.startswith('$')]} are not supported")
        result = copy.deepcopy(base)
        for name, value in patch.items():
            result[name] = merge(base[name], value, name) if name in base else copy.deepcopy(value)
        return result
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        result = copy.deepcopy(base)
        for item in patch:
            matches = [i for i, existing in enumerate(result) if existing.get(key) == item.get(key)]
            if matches:
                result[matches[0]] = merge(result[matches[0]], item, field)
            else:
                result.append(copy.deepcopy(item))
        return result
    return copy.deepcopy(patch)


def _set_image(manifests: list[Manifest], image: dict[str, str]) -> None:
    for manifest in manifests:
        pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag = container["image"], ""
            if ":" in name.rsplit("/", 1)[-1]:
                name, _, tag = name.rpartition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
