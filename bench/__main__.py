"""``python -m bench``: the service against the raw engine and a naive eager server, side by side in one run.

    python -m bench [--quick] [--checkpoint models/default/model.pt] [--package models/default/package] [--out bench/results]

Measures, per device (the CPU, and a GPU when there is one):

* the raw engine: the exported graph in ONNX Runtime at batch 1, 4, 8, 16, no HTTP;
* the service with batching on and off (max batch size 1), through real HTTP;
* the naive baseline: the eager torchvision model (same weights and canvas)
  behind a minimal FastAPI endpoint that serves one request at a time;

at 1, 4, 16 and 64 concurrent clients on a fixed set of real-sized JPEGs, with
a closed-loop load generator in its own process. Writes bench.json (every
figure and the machine), bench.md (tables) and PNG plots into --out.
A full run takes under 10 minutes on 2 CPU cores; --quick under 2 minutes
(a check that it all works, with too few requests for figures to publish).
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bench import plots, report, runner
from bench.config import FULL_PLAN, BenchConfig, BenchError, LoadPlan, quick_overrides
from bench.figures import BenchResult
from bench.systems import gpu_present


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = BenchConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and images: under 2 minutes")
    parser.add_argument(
        "--checkpoint", type=Path, default=defaults["checkpoint"].default, help="for the naive baseline (default: %(default)s)"
    )
    parser.add_argument(
        "--package", type=Path, default=defaults["package"].default, help="for the service and raw engine (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, help="results directory (default: bench/results, or bench/results/quick with --quick)")
    parser.add_argument(
        "--devices", choices=("auto", "cpu", "gpu", "cpu,gpu"), default="auto", help="auto: the CPU, and the GPU if there is one"
    )
    parser.add_argument("--clients", type=_ints, default=FULL_PLAN.clients, help="concurrent client counts (default: 1,4,16,64)")
    parser.add_argument(
        "--requests", type=int, help=f"requests per client count, spread over its clients (default: {FULL_PLAN.requests_per_level})"
    )
    parser.add_argument("--max-batch-size", type=int, default=defaults["max_batch_size"].default, help="the service's, with batching on")
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime and torch threads for every system (0: each library's default)"
    )
    parser.add_argument("--naive-threads", type=int, help="torch threads of the naive baseline alone (default: --threads)")
    parser.add_argument(
        "--gpu-providers", default=defaults["gpu_providers"].default, help="ONNX Runtime providers on the GPU, e.g. tensorrt,cuda,cpu"
    )
    parser.add_argument(
        "--gpu-engine", choices=("onnxruntime", "tensorrt"), default="onnxruntime", help="tensorrt: the package's prebuilt engine"
    )
    parser.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: rewrite bench.md and the plots from a bench.json")
    return parser.parse_args(argv)


def _devices(asked: str) -> tuple[str, ...]:
    if asked == "auto":
        return ("cpu", "gpu") if gpu_present() else ("cpu",)
    if "gpu" in asked and not gpu_present():
        raise BenchError(f"--devices {asked}: no NVIDIA GPU usable by this onnxruntime (install onnxruntime-gpu on a GPU host)")
    return tuple(asked.split(","))


def make_config(args: argparse.Namespace) -> BenchConfig:
    values = quick_overrides() if args.quick else {}
    plan: LoadPlan = values.get("plan", FULL_PLAN)
    plan = dataclasses.replace(plan, clients=args.clients, **({"requests_per_level": args.requests} if args.requests else {}))
    values |= {
        "plan": plan,
        "quick": args.quick,
        "devices": _devices(args.devices),
        "checkpoint": args.checkpoint.resolve(),
        "package": args.package.resolve(),
    }
    values |= {
        "max_batch_size": args.max_batch_size,
        "threads": args.threads,
        "naive_threads": args.naive_threads,
        "gpu_providers": args.gpu_providers,
        "gpu_engine": args.gpu_engine,
    }
    if args.out is not None:
        values["out"] = args.out
    return BenchConfig(**values)


def write_outputs(result: BenchResult, out: Path) -> None:
    """bench.json, bench.md and the plots, into ``out``; prints the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(result.model_dump_json(indent=2) + "\n")
    written = {device.device: [path.name for path in plots.plot_device(device, out, result.quick)] for device in result.devices}
    text = report.markdown(result, written)
    (out / "bench.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out}/bench.json, bench.md and {sum(len(v) for v in written.values())} plots", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        write_outputs(BenchResult.model_validate_json(args.render.read_text()), args.out or args.render.parent)
        return 0
    try:
        config = make_config(args)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_outputs(runner.run(config), config.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
