"""Command line of the training side: ``python -m model_export {synth,train,evaluate,export,quantize,build-engine}``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from model_export.arch_names import ARCH_NAMES, COMPACT_ARCH
from model_export.cli_options import config_from, config_option, parse_canvas, positive_int
from model_export.command_errors import CheckpointError, CommandError
from model_export.config import DEFAULT_CANVAS, EngineConfig, ExportConfig, SynthConfig, TrainConfig, parse_profile
from model_export.evaluate_command import add_evaluate
from model_export.int8_command import add_int8_options, add_quantize, int8_sets, write_int8_graph
from service.manifest import PackageError

if TYPE_CHECKING:  # the command line imports torch only for the subcommands that need it
    from model_export.checkpoint import LoadedModel
    from model_export.coco import CocoDataset
    from model_export.train import EpochCallback


def _canvas_text(canvas: tuple[int, int]) -> str:
    return f"{canvas[0]}x{canvas[1]}"


def _add_synth(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "synth",
        help="generate a synthetic COCO data set of shapes",
        description="Shapes on textured scenes or on photos (random crops, scales, flips, colour jitter): scikit-image's training photos, or a folder (--backgrounds). Check sets for a model trained on them, from the photos kept out of training (model_export.backgrounds.SKIMAGE_HELD_OUT): shapes on them with --held-out-photos --empty-fraction 0; the photos bare (no shape) with --held-out-photos --photos-only.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write annotations.json and images/ into")
    config_option(parser, SynthConfig, "--count", "number of images", type=positive_int)
    config_option(parser, SynthConfig, "--seed", "random seed; the same seed (and photos) gives the same bytes", type=int)
    config_option(parser, SynthConfig, "--size-scale", "scale of the image sizes, about 320 px at 1.0", type=float)
    config_option(parser, SynthConfig, "--empty-fraction", "share of images that hold no shape (pure negatives)", type=float)
    photos = parser.add_argument_group("photo backgrounds")
    config_option(photos, SynthConfig, "--photo-fraction", "share of images on a photo (default 0; 1 if photos are asked for)", type=float)
    config_option(photos, SynthConfig, "--backgrounds", "photos from this folder (and its subfolders) instead of scikit-image's", type=Path)
    config_option(photos, SynthConfig, "--held-out-photos", "scikit-image's photos kept out of training only", action="store_true")
    config_option(photos, SynthConfig, "--photos-only", "every image a bare photo crop: no shape, no noise", action="store_true")
    parser.set_defaults(run=_run_synth)


def _run_synth(args: argparse.Namespace) -> None:
    from model_export.synth import write_dataset

    path = write_dataset(args.out, config_from(SynthConfig, args))
    print(f"wrote {path}")


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a Faster R-CNN on a COCO-format data set")
    parser.add_argument("--data", type=Path, required=True, help="training data set directory (annotations.json + images)")
    parser.add_argument("--arch", choices=sorted(ARCH_NAMES), default=COMPACT_ARCH, help=f"architecture (default {COMPACT_ARCH})")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write after every epoch")
    parser.add_argument("--val", type=Path, help="validation data set: COCO mAP after every epoch")
    config_option(parser, TrainConfig, "--epochs", "epochs to train", type=positive_int)
    config_option(parser, TrainConfig, "--batch-size", "images per iteration", type=positive_int)
    config_option(parser, TrainConfig, "--lr", "AdamW learning rate", type=float)
    parser.add_argument(
        "--canvas", type=parse_canvas, help=f"canvas HxW the model sees (default: the checkpoint's, else {_canvas_text(DEFAULT_CANVAS)})"
    )
    parser.add_argument("--resume", type=Path, help="checkpoint to go on from (its .train-state.pt restores the optimizer)")
    parser.add_argument("--init", type=Path, help="checkpoint or torchvision state_dict to start from (fine-tuning)")
    parser.add_argument("--categories", type=Path, help="class names of a plain state_dict given with --init")
    parser.add_argument("--weights", help="torchvision pretrained weights to start from, e.g. COCO_V1 (downloads them)")
    config_option(parser, TrainConfig, "--workers", "data loader processes", type=int)
    config_option(parser, TrainConfig, "--seed", "random seed", type=int)
    config_option(parser, TrainConfig, "--max-iters", "stop after this many iterations (smoke tests)", type=positive_int)
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=TrainConfig.augment, help="turn augmentation off")
    config_option(
        parser, TrainConfig, "--box-batch", "RoIs sampled per image for the box head's loss (default: the model's)", type=positive_int
    )
    config_option(parser, TrainConfig, "--bf16", "bfloat16 autocast (faster on CPUs with AMX; weights stay float32)", action="store_true")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from model_export.coco import load_dataset
    from model_export.train import plot_losses, train

    dataset = load_dataset(args.data)
    val = load_dataset(args.val) if args.val else None
    loaded = _initial_model(args, dataset.categories)
    if loaded.categories != dataset.categories:
        raise CheckpointError(
            f"the model's {len(loaded.categories)} classes {loaded.categories[1:]} do not match the data set's "
            f"{len(dataset.categories)} classes {dataset.categories[1:]} ({dataset.annotations_path})"
        )
    config = config_from(TrainConfig, args)
    on_epoch_end = _validator(val) if val else None
    started = time.monotonic()
    history = train(loaded, dataset, args.out, config, resume_from=args.resume, on_epoch_end=on_epoch_end)
    plot_path = args.out.with_suffix(".loss.png")
    plot_losses(history, plot_path)
    print(f"wrote {args.out} and {plot_path} in {time.monotonic() - started:.0f} s")


def _initial_model(args: argparse.Namespace, data_categories: list[str]) -> LoadedModel:
    from model_export.architectures import build_model
    from model_export.checkpoint import LoadedModel, load_checkpoint, load_pretrained, read_categories

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


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="export a checkpoint to a model package (ONNX graph + manifest), verified")
    parser.add_argument("--checkpoint", type=Path, required=True, help="project checkpoint or torchvision state_dict")
    parser.add_argument("--out", type=Path, required=True, help="package directory to write (replaced whole on success)")
    parser.add_argument("--arch", choices=sorted(ARCH_NAMES), help="architecture of a plain state_dict")
    parser.add_argument("--categories", type=Path, help="class names of a plain state_dict (JSON list or one per line)")
    parser.add_argument("--canvas", type=parse_canvas, help=f"canvas HxW (default: the checkpoint's, else {_canvas_text(DEFAULT_CANVAS)})")
    config_option(parser, ExportConfig, "--max-batch", "largest batch the graph accepts", type=int)
    config_option(parser, ExportConfig, "--max-detections", "K, detections per image", type=int)
    config_option(parser, ExportConfig, "--opset", "ONNX opset", type=int)
    config_option(parser, ExportConfig, "--score-threshold", "the service's default score threshold", type=float)
    config_option(parser, ExportConfig, "--iou-threshold", "the service's default NMS IoU threshold (default: the model's)", type=float)
    config_option(parser, ExportConfig, "--name", "model name")
    config_option(parser, ExportConfig, "--version", "model version")
    config_option(
        parser, ExportConfig, "--precision", "int8: an int8 graph beside the float one too (needs --calibration)", choices=["fp32", "int8"]
    )
    add_int8_options(parser.add_argument_group("int8 graph (with --precision int8)"), calibration_required=False)
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from model_export.checkpoint import load_checkpoint, read_categories
    from model_export.export import export_package

    config = config_from(ExportConfig, args)
    sets = int8_sets(args, config.precision)  # the images are checked before minutes of export
    categories = read_categories(args.categories) if args.categories else None
    loaded = load_checkpoint(args.checkpoint, arch=args.arch, categories=categories, canvas=args.canvas)
    if sets is not None:
        (sets[1] or sets[0]).check_classes(loaded.categories)  # the validation set's (or the held-out part's)
    print(f"exporting {loaded.arch} on a {loaded.canvas[0]}x{loaded.canvas[1]} canvas, batch 1..{config.max_batch}", flush=True)
    parity = export_package(loaded, args.out, config).parity
    measured = (
        f"parity {parity.matched}/{parity.compared} detections matched, "
        f"max box delta {parity.max_box_delta_px:.2e} px, max score delta {parity.max_score_delta:.2e}"
        if parity
        else "no parity figures"
    )
    print(f"wrote {args.out}: {measured}")
    if sets is not None:
        write_int8_graph(args, args.out, *sets)


def _add_build_engine(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "build-engine",
        help="build a TensorRT engine for this GPU into a package",
        description="TensorRT 11 builds strongly typed networks: the engine's precision is the graph's. "
        "--fp16 first converts model.onnx to an fp16 graph (model.fp16.onnx, on the CPU); --int8 builds the package's int8 "
        "Q/DQ graph (model_export quantize makes it); --graph builds another graph made from model.onnx.",
    )
    parser.add_argument("--package", type=Path, required=True, help="model package directory")
    precision = parser.add_mutually_exclusive_group()
    fp16_help = "build from an fp16 graph made from model.onnx (box decoding, TopK, NMS, RoiAlign stay fp32)"
    config_option(precision, EngineConfig, "--fp16", fp16_help, action="store_true")
    int8_help = "build from the package's int8 Q/DQ graph, checked against its manifest (make one: model_export quantize)"
    config_option(precision, EngineConfig, "--int8", int8_help, action="store_true")
    graph_help = "build from this graph instead (fp16, or int8 with Q/DQ nodes), made from model.onnx"
    config_option(precision, EngineConfig, "--graph", graph_help, type=Path)
    profile = f"{EngineConfig.min_batch}:{EngineConfig.opt_batch}:{EngineConfig.max_batch}"
    parser.add_argument("--batch", default=profile, help=f"optimization profile MIN:OPT:MAX over the batch (default {profile})")
    config_option(parser, EngineConfig, "--workspace-mb", "TensorRT's workspace limit in MiB", type=int)
    parser.set_defaults(run=_run_build_engine)


def _run_build_engine(args: argparse.Namespace) -> None:
    from model_export.engine import build_engine

    low, opt, high = parse_profile(args.batch)
    started = time.monotonic()
    config = config_from(EngineConfig, args, min_batch=low, opt_batch=opt, max_batch=high)
    path = build_engine(args.package, config, progress=lambda line: print(f"{line} (a few minutes)", flush=True))
    print(f"wrote {path} and {path.with_suffix('.json').name} in {time.monotonic() - started:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_synth(commands)
    _add_train(commands)
    add_evaluate(commands)
    _add_export(commands)
    add_quantize(commands)
    _add_build_engine(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CommandError, PackageError, FileNotFoundError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
