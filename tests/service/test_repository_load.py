"""Versions come and go under load: two models, two versions of one, clients sending to each throughout while the test
unloads, loads and reloads them; every request gets a correct answer from the version it asked for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.servers import ServerProcess
from tests.service.helpers import make_repository, set_policy
from tests.service.readings import same_detections

KEY = "a-repository-load-key-01234"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGES = 3
Ask = tuple[str, str | None]  # (model, version or None: its highest loaded)
ASKS: list[Ask] = [("alpha", "1"), ("alpha", "2"), ("alpha", None), ("beta", "1"), ("beta", None)]
HIGHEST = {"alpha": "2", "beta": "1"}  # alpha 2 is never unloaded here: it is the highest throughout


@dataclass(frozen=True)
class Answer:
    ask: Ask
    image: int
    sent: float
    received: float
    status: int
    body: dict


def send_until(stop: threading.Event, url: str, ask: Ask, images: list[bytes], answers: list[Answer]) -> None:
    """One closed-loop client: /detect for ``ask``, image after image, until ``stop``; a transport error fails the test."""
    params = {"model": ask[0], **({"version": ask[1]} if ask[1] else {})}
    with httpx.Client(base_url=url, headers=AUTH, timeout=60, trust_env=False) as client:
        count = 0
        while not stop.is_set():
            image = count % IMAGES
            sent = time.monotonic()
            response = client.post("/detect", params=params, content=images[image], headers={"Content-Type": "image/jpeg"})
            answers.append(Answer(ask, image, sent, time.monotonic(), response.status_code, response.json()))
            count += 1


class Control:
    """Model control calls, recording when each (model, version) was out of service: from the call that takes it out
    starting to the call that brings it back returning."""

    def __init__(self, http: httpx.Client, root: Path) -> None:
        self.http, self.root = http, root
        self.out: dict[Ask, list[list[float]]] = {}

    def call(
        self, action: str, name: str, takes_out: Sequence[Ask] = (), brings_back: Sequence[Ask] = (), policy: dict | None = None
    ) -> None:
        if policy is not None:
            set_policy(self.root, name, policy)
        started = time.monotonic()
        for ask in takes_out:
            self.out.setdefault(ask, []).append([started, float("inf")])
        response = self.http.post(f"/v2/repository/models/{name}/{action}")
        assert response.status_code == 200, response.text
        for ask in brings_back:
            self.out[ask][-1][1] = time.monotonic()
        time.sleep(1.0)  # traffic between the changes, to every version then served

    def was_out(self, answer: Answer) -> bool:
        return any(start < answer.received and answer.sent < end for start, end in self.out.get(answer.ask, []))


def test_two_models_and_two_versions_under_load_while_versions_come_and_go(
    start_server: Callable[..., ServerProcess], small_package: Path, tmp_path: Path, scene_images: list[bytes]
) -> None:
    root = make_repository(tmp_path, small_package, {"alpha": [1, 2], "beta": [1]})
    set_policy(root, "alpha", {"latest": 2})
    env = {"DETECTOR_MODEL_REPOSITORY": str(root), "DETECTOR_MODEL_CONTROL": "explicit", "DETECTOR_API_KEYS": KEY}
    server = start_server(**env, DETECTOR_MAX_LOADED_VERSIONS="4")
    http = server.wait_ready(headers=AUTH)
    images = scene_images[:IMAGES]
    asked = {"params": {"model": "alpha", "version": "1"}, "headers": {"Content-Type": "image/jpeg"}}
    reference = [http.post("/detect", content=image, **asked).json()["detections"] for image in images]  # type: ignore[arg-type]
    assert all(reference), "each scene should give detections, or comparing them proves nothing"

    stop = threading.Event()
    answers: list[list[Answer]] = [[] for _ in ASKS]
    clients = [threading.Thread(target=send_until, args=(stop, server.url, ask, images, answers[i])) for i, ask in enumerate(ASKS)]
    for client in clients:
        client.start()
    control = Control(http, root)
    try:
        time.sleep(1.0)
        control.call("unload", "beta", takes_out=[("beta", "1"), ("beta", None)])
        control.call("load", "alpha", takes_out=[("alpha", "1")], policy={"specific": [2]})  # drops 1, reloads 2
        control.call("load", "beta", brings_back=[("beta", "1"), ("beta", None)])
        control.call("load", "alpha", brings_back=[("alpha", "1")], policy={"latest": 2})  # loads 1, reloads 2
        control.call("load", "alpha")  # reloads both
    finally:
        stop.set()
        for client in clients:
            client.join(120)
    assert not any(client.is_alive() for client in clients), "a client never got its last answer"

    every = [answer for per_client in answers for answer in per_client]
    wrong = [answer for answer in every if not correct(answer, reference) and not (answer.status == 404 and control.was_out(answer))]
    assert not wrong, f"{len(wrong)} of {len(every)} answers wrong, say {wrong[:3]}"
    last_change = max(end for windows in control.out.values() for _, end in windows)
    for ask, per_client in zip(ASKS, answers, strict=True):
        assert any(a.status == 200 and a.sent > last_change for a in per_client), f"{ask} was never served after the last change"
    out = [answer for answer in every if answer.status == 404]
    assert out and {answer.ask for answer in out} <= set(control.out), "the unloads should have been seen, and only by their versions"
    assert all("loaded" in answer.body["detail"] for answer in out), out[:3]


def correct(answer: Answer, reference: list[list[dict]]) -> bool:
    """200 from the version asked for (its class names say which), with the detections every version gives this image."""
    name, version = answer.ask[0], answer.ask[1] or HIGHEST[answer.ask[0]]
    if answer.status != 200 or answer.body["model"] != {"name": name, "version": version}:
        return False
    rows = answer.body["detections"]
    return all(row["class_name"].startswith(f"{name}{version}-") for row in rows) and same_detections(rows, reference[answer.image])
