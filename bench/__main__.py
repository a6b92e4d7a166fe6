"""``python -m bench``: the service against the raw engine, a naive eager server and the eager model, in one report.

    python -m bench [--quick] [--only SECTIONS] [--checkpoint models/default/model.pt] [--package models/default/package] [--out bench/results]
    python -m bench --only precisions [--configurations onnxruntime-f32,openvino-int8] [--eval-images 300]

Sections, per device (the CPU, and a GPU when there is one):

* systems: the raw engine (the exported graph in the service's engine at batch 1, 4, 8, 16, no HTTP), the
  service with batching on and off (max batch size 1) through real HTTP, and the naive baseline (the eager
  torchvision model, same weights and canvas, behind a minimal FastAPI endpoint that serves one request at a
  time), at 1, 4, 16 and 64 concurrent clients, with a closed-loop load generator in its own process;
* service-throughput: the service at 16 clients against the same engine behind the same batcher without HTTP,
  in alternating rounds;
* export-speed: the exported graph against the eager model, per image at batch 1, 4 and 8, alternating in one process;
* precisions: every engine and precision this machine can run, side by side: ONNX Runtime f32 (the baseline) and
  int8, OpenVINO f32, int8 and bf16 (where the CPU has BF16; else listed as skipped, with the reason), on a GPU
  ONNX Runtime with the CUDA and the TensorRT providers and the package's TensorRT engines, and "auto" (the service
  with DETECTOR_ENGINE and DETECTOR_PRECISION unset: what it chooses). For each: the graph alone per image at batch
  1, 8 and 16 (the configurations alternating round by round in one process), the service at every client count,
  mAP@[.5:.95] and mAP@.5 on 300 held-out synthetic scenes (seed 13, kept in --cache) beside the eager checkpoint's,
  and ratios against ONNX Runtime f32 (images/s at 16 clients, batch-1 latency);
* protocols: one server at 16 clients over HTTP (POST /detect) and over gRPC (v2 ModelInfer, tritonclient's
  asyncio client), one image a request, alternating round by round: images/s and p99;
* train-step: a training iteration of the package's architecture with torchvision's RoIAlign and with the
  embedding-bag RoIAlign that `model_export train` uses, at box batches 256 and 128, alternating step by step
  (about a minute on 2 cores).

All on a fixed set of real-sized JPEGs. Writes bench.json (every figure, and the run and machine that measured
it), bench.md (tables) and PNG plots into --out. ``--only`` measures some sections and merges them into the
report already in --out (a section keeps the run that measured it; --fresh starts a new report). On 2 CPU cores
systems, service-throughput and export-speed take under 10 minutes, precisions about 7 more (5 configurations, 8
minutes with bf16; its first run also draws the 300 scenes, about 30 s); --quick about 4 minutes in all (a check that
it all works, with too few requests for figures to publish). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import onnxruntime
from pydantic import ValidationError

from bench import plots, precisions, report, runner
from bench.config import FULL_PLAN, BenchConfig, BenchError, LoadPlan, PrecisionsPlan, quick_overrides
from bench.figures import SECTIONS, BenchResult
from service.engines.onnxruntime import uses_gpu
from service.gpu import gpu_problem


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = BenchConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, images, rounds and scenes: about 4 minutes")
    parser.add_argument(
        "--only",
        type=_names,
        default=tuple(SECTIONS),
        metavar="SECTIONS",
        help=f"comma-separated, of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--fresh", action="store_true", help="a new report: do not keep the sections of the one already in --out")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=defaults["checkpoint"].default,
        help="for the naive baseline, export-speed and the eager mAP of precisions (default: %(default)s)",
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
    parser.add_argument(
        "--configurations",
        type=_names,
        default=(),
        metavar="NAMES",
        help="precisions: only these, e.g. onnxruntime-f32,openvino-int8,auto (default: all this machine may run)",
    )
    parser.add_argument("--eval-images", type=int, help="precisions: held-out scenes for the mAP (default 300; 16 with --quick)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=defaults["cache"].default,
        help="precisions: where its scenes and TensorRT caches are kept (default: %(default)s)",
    )
    parser.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: rewrite bench.md and the plots from a bench.json")
    return parser.parse_args(argv)


def gpu_unusable(gpu_engine: str) -> str | None:
    """Why the benchmark cannot measure on a GPU here; None when it can."""
    problem = gpu_problem()
    if problem is None and gpu_engine == "onnxruntime" and not uses_gpu(onnxruntime.get_available_providers()):
        problem = "this onnxruntime has no GPU execution provider (install onnxruntime-gpu)"
    return problem


def _devices(asked: str, gpu_engine: str) -> tuple[str, ...]:
    problem = gpu_unusable(gpu_engine) if "gpu" in asked or asked == "auto" else None
    if asked == "auto":
        return ("cpu", "gpu") if problem is None else ("cpu",)
    if problem is not None:
        raise BenchError(f"--devices {asked}: {problem}")
    return tuple(asked.split(","))


def make_config(args: argparse.Namespace) -> BenchConfig:
    values = quick_overrides() if args.quick else {}
    plan: LoadPlan = values.get("plan", FULL_PLAN)
    plan = dataclasses.replace(plan, clients=args.clients, **({"requests_per_level": args.requests} if args.requests else {}))
    values |= {
        "plan": plan,
        "quick": args.quick,
        "sections": args.only,
        "devices": _devices(args.devices, args.gpu_engine),
        "checkpoint": args.checkpoint.resolve(),
        "package": args.package.resolve(),
        "cache": args.cache.resolve(),
    }
    values |= {
        "max_batch_size": args.max_batch_size,
        "threads": args.threads,
        "naive_threads": args.naive_threads,
        "gpu_providers": args.gpu_providers,
        "gpu_engine": args.gpu_engine,
    }
    precisions.check_names(args.configurations, args.cache)
    precision_plan: PrecisionsPlan = values.get("precisions", PrecisionsPlan())
    values["precisions"] = dataclasses.replace(
        precision_plan, configurations=args.configurations, **({"eval_images": args.eval_images} if args.eval_images is not None else {})
    )
    if args.out is not None:
        values["out"] = args.out
    return BenchConfig(**values)


def merged(result: BenchResult, out: Path) -> BenchResult:
    """``result`` with the devices and sections it did not measure kept from the report already in ``out``, if any."""
    path = out / "bench.json"
    if not path.is_file():
        return result
    try:
        older = BenchResult.model_validate_json(path.read_text())
        return result.merged_over(older)
    except (ValidationError, ValueError) as error:
        print(f"{path}: not merged, replaced ({str(error).splitlines()[0]})", file=sys.stderr)
        return result


def write_outputs(result: BenchResult, out: Path) -> None:
    """bench.json, bench.md and the plots, into ``out``; prints the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(result.model_dump_json(indent=2) + "\n")
    written: dict[str, dict[str, list[str]]] = {}
    for device in result.devices:
        plotted = written.setdefault(device.device, {})
        if device.systems is not None:
            plotted["systems"] = [path.name for path in plots.plot_device(device.device, device.systems, out)]
        if device.precisions is not None:
            plotted["precisions"] = [plots.plot_precisions(device.device, device.precisions, out).name]
    text = report.markdown(result, written)
    (out / "bench.md").write_text(text + "\n")
    print(text)
    print(
        f"wrote {out}/bench.json, bench.md and {sum(len(names) for device in written.values() for names in device.values())} plots",
        file=sys.stderr,
    )


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
    command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    result = runner.run(config, command)
    write_outputs(result if args.fresh else merged(result, config.out), config.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
