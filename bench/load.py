"""A closed-loop HTTP load generator: C clients, each sending its requests one after another.

    python -m bench.load --url http://127.0.0.1:8000 --clients 16 --requests 20 --images DIR

Prints one JSON object: images/s, latency percentiles (ms), status counts.
Runs in its own process so that it does not share the server's interpreter.
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def run_load(url: str, images: list[bytes], clients: int, requests_per_client: int) -> dict:
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            start_gate.wait()
            for n in range(requests_per_client):
                body = images[(index * requests_per_client + n) % len(images)]
                sent = time.perf_counter()
                try:
                    status = http.post("/detect", content=body, headers={"Content-Type": "image/jpeg"}).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    latencies.append(time.perf_counter() - sent)
                    statuses[status] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "images_per_s": round(statuses[200] / elapsed, 2),
        "latency_ms": {p: round(float(np.percentile(ms, q)), 1) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))}
        | {"max": round(float(ms.max()), 1)},
        "status": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--images", type=Path, required=True, help="directory of .jpg files to send")
    args = parser.parse_args()
    images = [path.read_bytes() for path in sorted(args.images.glob("*.jpg"))]
    print(json.dumps(run_load(args.url, images, args.clients, args.requests)))


if __name__ == "__main__":
    main()
