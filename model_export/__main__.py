"""Command line of the training side: ``python -m model_export {synth,train,evaluate,...}``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from model_export.arch_names import ARCH_NAMES, COMPACT_ARCH
from model_export.errors import CommandError

if TYPE_CHECKING:  # the command line imports torch only for the subcommands that need it
    from model_export.checkpoint import LoadedModel
    from model_export.coco import CocoDataset
    from model_export.train import EpochCallback


def parse_canvas(text: str) -> tuple[int, int]:
    """``HxW`` (or one number for a square) -> (H, W)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"canvas should be HxW, like 320x320, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 32:
        raise argparse.ArgumentTypeError(f"canvas should be HxW with both sides at least 32, got {text!r}")
    return values[0], values[1]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"should be at least 1, got {value}")
    return value


def _add_synth(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("synth", help="generate a synthetic COCO data set of shapes")
    parser.add_argument("--out", type=Path, required=True, help="directory to write annotations.json and images/ into")
    parser.add_argument("--count", type=_positive, default=100, help="number of images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    parser.add_argument("--size-scale", type=float, default=1.0, help="scale of the image sizes (default 1.0, about 320 px)")
    parser.set_defaults(run=_run_synth)


def _run_synth(args: argparse.Namespace) -> None:
    from model_export.synth import SynthConfig, write_dataset

    path = write_dataset(args.out, SynthConfig(count=args.count, seed=args.seed, size_scale=args.size_scale))
    print(f"wrote {path}")


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a Faster R-CNN on a COCO-format data set")
    parser.add_argument("--data", type=Path, required=True, help="training data set directory (annotations.json + images)")
    parser.add_argument("--arch", choices=sorted(ARCH_NAMES), default=COMPACT_ARCH, help=f"architecture (default {COMPACT_ARCH})")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write after every epoch")
    parser.add_argument("--val", type=Path, help="validation data set: COCO mAP after every epoch")
    parser.add_argument("--epochs", type=_positive, default=12)
    parser.add_argument("--batch-size", type=_positive, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--canvas", type=parse_canvas, default=None, help="canvas HxW the model sees (default 320x320)")
    parser.add_argument("--resume", type=Path, help="checkpoint to go on from (its .train-state.pt restores the optimizer)")
    parser.add_argument("--init", type=Path, help="checkpoint or torchvision state_dict to start from (fine-tuning)")
    parser.add_argument("--categories", type=Path, help="class names of a plain state_dict given with --init")
    parser.add_argument("--weights", help="torchvision pretrained weights to start from, e.g. COCO_V1 (downloads them)")
    parser.add_argument("--workers", type=int, default=1, help="data loader processes (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iters", type=_positive, help="stop after this many iterations (smoke tests)")
    parser.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on CPUs with AMX; weights stay float32)")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from model_export.checkpoint import CheckpointError
    from model_export.coco import load_dataset
    from model_export.train import TrainConfig, plot_losses, train

    dataset = load_dataset(args.data)
    val = load_dataset(args.val) if args.val else None
    loaded = _initial_model(args, dataset.categories)
    if loaded.categories != dataset.categories:
        raise CheckpointError(
            f"the model's {len(loaded.categories)} classes {loaded.categories[1:]} do not match the data set's "
            f"{len(dataset.categories)} classes {dataset.categories[1:]} ({dataset.annotations_path})"
        )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        workers=args.workers,
        seed=args.seed,
        max_iters=args.max_iters,
        augment=not args.no_augment,
        bf16=args.bf16,
    )
    on_epoch_end = _validator(val) if val else None
    started = time.monotonic()
    history = train(loaded, dataset, args.out, config, resume_from=args.resume, on_epoch_end=on_epoch_end)
    plot_path = args.out.with_suffix(".loss.png")
    plot_losses(history, plot_path)
    print(f"wrote {args.out} and {plot_path} in {time.monotonic() - started:.0f} s")


def _initial_model(args: argparse.Namespace, data_categories: list[str]) -> LoadedModel:
    from model_export.architectures import build_model
    from model_export.checkpoint import DEFAULT_CANVAS, LoadedModel, load_checkpoint, load_pretrained, read_categories

    start = args.resume or args.init
    if start is not None:
        categories = read_categories(args.categories) if args.categories else None
        return load_checkpoint(start, arch=args.arch if categories else None, categories=categories, canvas=args.canvas)
    canvas = args.canvas or DEFAULT_CANVAS
    if args.weights:
        return load_pretrained(args.arch, args.weights, data_categories, canvas)
    return LoadedModel(build_model(args.arch, len(data_categories), canvas), args.arch, data_categories, canvas)


def _validator(val: CocoDataset) -> EpochCallback:
    from model_export.evaluate import eager_predictor, evaluate

    def validate(epoch: int, loaded: LoadedModel) -> dict[str, float]:
        report = evaluate(eager_predictor(loaded.model), val, loaded.canvas)
        print(f"epoch {epoch + 1}: val mAP@[.5:.95] {report.map:.4f}  mAP@.5 {report.map50:.4f}", flush=True)
        return {"val_map": round(report.map, 4), "val_map50": round(report.map50, 4)}

    return validate


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", help="COCO mAP of a checkpoint (or an exported package) on a data set")
    parser.add_argument("--data", type=Path, required=True, help="data set directory (annotations.json + images)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint to evaluate with torchvision (eager)")
    source.add_argument("--package", type=Path, help="model package to evaluate with ONNX Runtime")
    parser.add_argument("--arch", choices=sorted(ARCH_NAMES), help="architecture of a plain state_dict")
    parser.add_argument("--categories", type=Path, help="class names of a plain state_dict")
    parser.add_argument("--canvas", type=parse_canvas, help="canvas HxW (default: the checkpoint's)")
    parser.add_argument("--json", type=Path, help="write map, map50 and per_class here")
    parser.add_argument("--plot", type=Path, help="write the precision-recall plot here (default: beside --json)")
    parser.add_argument("--batch-size", type=_positive, default=8)
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from model_export.coco import load_dataset
    from model_export.evaluate import eager_predictor, evaluate, format_table, write_report

    dataset = load_dataset(args.data)
    if args.package is not None:
        from model_export.package import OnnxPredictor

        predictor = OnnxPredictor(args.package)
        categories, canvas = predictor.manifest["categories"], tuple(predictor.manifest["canvas"])
        report = evaluate(predictor, dataset, canvas, args.batch_size, categories)
    else:
        from model_export.checkpoint import load_checkpoint, read_categories

        given = read_categories(args.categories) if args.categories else None
        loaded = load_checkpoint(args.checkpoint, arch=args.arch, categories=given, canvas=args.canvas)
        report = evaluate(eager_predictor(loaded.model), dataset, loaded.canvas, args.batch_size, loaded.categories)
    print(format_table(report))
    plot = args.plot or (args.json.with_suffix(".pr.png") if args.json else None)
    write_report(report, args.json, plot)
    if args.json:
        print(json.dumps(report.to_json()))


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="export a checkpoint to a model package (ONNX graph + manifest), verified")
    parser.add_argument("--checkpoint", type=Path, required=True, help="project checkpoint or torchvision state_dict")
    parser.add_argument("--out", type=Path, required=True, help="package directory to write (replaced whole on success)")
    parser.add_argument("--arch", choices=sorted(ARCH_NAMES), help="architecture of a plain state_dict")
    parser.add_argument("--categories", type=Path, help="class names of a plain state_dict (JSON list or one per line)")
    parser.add_argument("--canvas", type=parse_canvas, help="canvas HxW (default: the checkpoint's, else 320x320)")
    parser.add_argument("--max-batch", type=int, default=16, help="largest batch the graph accepts (default 16)")
    parser.add_argument("--max-detections", type=int, default=100, help="K, detections per image (default 100)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="the service's default score threshold (default 0.5)")
    parser.add_argument("--iou-threshold", type=float, help="the service's default NMS IoU threshold (default: the model's)")
    parser.add_argument("--name", default="default", help="model name (default 'default')")
    parser.add_argument("--version", default="1", help="model version (default '1')")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from model_export.checkpoint import load_checkpoint, read_categories
    from model_export.export import ExportConfig, export_package

    config = ExportConfig(
        name=args.name,
        version=args.version,
        max_batch=args.max_batch,
        max_detections=args.max_detections,
        opset=args.opset,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
    )
    categories = read_categories(args.categories) if args.categories else None
    loaded = load_checkpoint(args.checkpoint, arch=args.arch, categories=categories, canvas=args.canvas)
    print(f"exporting {loaded.arch} on a {loaded.canvas[0]}x{loaded.canvas[1]} canvas, batch 1..{config.max_batch}", flush=True)
    manifest = export_package(loaded, args.out, config)
    parity = manifest["parity"]
    print(
        f"wrote {args.out}: parity {parity['matched']}/{parity['compared']} detections matched, "
        f"max box delta {parity['max_box_delta_px']:.2e} px, max score delta {parity['max_score_delta']:.2e}"
    )


def _add_build_engine(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "build-engine",
        help="build a TensorRT engine for this GPU into a package",
        description="TensorRT 11 builds strongly typed networks: the engine's precision is the graph's. "
        "--fp16 first converts model.onnx to an fp16 graph (model.fp16.onnx, on the CPU); --graph builds another graph made from it.",
    )
    parser.add_argument("--package", type=Path, required=True, help="model package directory")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16", action="store_true", help="build from an fp16 graph made from model.onnx (box decoding, TopK, NMS, RoiAlign stay fp32)"
    )
    precision.add_argument("--graph", type=Path, help="build from this graph instead (fp16, or int8 with Q/DQ nodes), made from model.onnx")
    parser.add_argument("--batch", default="1:8:16", help="optimization profile MIN:OPT:MAX over the batch (default 1:8:16)")
    parser.add_argument("--workspace-mb", type=int, default=2048, help="TensorRT's workspace limit in MiB (default 2048)")
    parser.set_defaults(run=_run_build_engine)


def _run_build_engine(args: argparse.Namespace) -> None:
    from model_export.engine import EngineConfig, build_engine, parse_profile

    low, opt, high = parse_profile(args.batch)
    started = time.monotonic()
    config = EngineConfig(low, opt, high, fp16=args.fp16, workspace_mb=args.workspace_mb, graph=args.graph)
    path = build_engine(args.package, config, progress=lambda line: print(f"{line} (a few minutes)", flush=True))
    print(f"wrote {path} and {path.with_suffix('.json').name} in {time.monotonic() - started:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_synth(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_export(commands)
    _add_build_engine(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CommandError, FileNotFoundError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
