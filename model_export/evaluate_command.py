"""The ``evaluate`` command: COCO mAP, false alarms, and a picture grid of a model on a data set.

Light on purpose: torch, ONNX Runtime and pycocotools load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from model_export.arch_names import ARCH_NAMES
from model_export.cli_options import config_from, config_option, parse_canvas, positive_int
from model_export.config import EvaluateConfig

if TYPE_CHECKING:
    from model_export.detections import BatchPredictor


def add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="COCO mAP and false alarms of a checkpoint (or an exported package) on a data set",
        description="COCO mAP on a data set, and false alarms: detections per image at --false-alarm-score or above on images that hold no object, the data set's own (images without annotations) and a folder's (--negatives).",
    )
    parser.add_argument("--data", type=Path, required=True, help="data set directory (annotations.json + images)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint to evaluate with torchvision (eager)")
    source.add_argument("--package", type=Path, help="model package to evaluate with ONNX Runtime")
    parser.add_argument("--arch", choices=sorted(ARCH_NAMES), help="architecture of a plain state_dict")
    parser.add_argument("--categories", type=Path, help="class names of a plain state_dict")
    parser.add_argument("--canvas", type=parse_canvas, help="canvas HxW (default: the checkpoint's)")
    parser.add_argument("--negatives", type=Path, help="folder of photos holding no object (of a COCO set: its images without any)")
    config_option(parser, EvaluateConfig, "--false-alarm-score", "the least score of a false alarm on an empty image", type=float)
    parser.add_argument("--json", type=Path, help="write map, map50, per_class and false_alarms here")
    parser.add_argument("--plot", type=Path, help="write the precision-recall plot here (default: beside --json)")
    grid_help = "write a picture grid here: the detections at --false-alarm-score on images of the set (and of --negatives)"
    parser.add_argument("--grid", type=Path, help=grid_help)
    config_option(parser, EvaluateConfig, "--batch-size", "images per batch", type=positive_int)
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from model_export.backgrounds import read_photo_folder
    from model_export.coco import load_dataset
    from model_export.evaluate import evaluate, format_table, write_report
    from model_export.grid import write_evaluation_grid

    config = config_from(EvaluateConfig, args)
    dataset = load_dataset(args.data)
    negatives = read_photo_folder(args.negatives, "--negatives") if args.negatives else None  # checked before a model loads
    predict, canvas, categories = _model_to_evaluate(args)
    report = evaluate(predict, dataset, canvas, config.batch_size, categories, negatives, config.false_alarm_score)
    print(format_table(report))
    plot = args.plot or (args.json.with_suffix(".pr.png") if args.json else None)
    write_report(report, args.json, plot)
    if args.grid:
        write_evaluation_grid(args.grid, predict, args.data, negatives, canvas, categories, config.false_alarm_score)
    if args.json:
        print(json.dumps(report.to_json()))


def _model_to_evaluate(args: argparse.Namespace) -> tuple[BatchPredictor, tuple[int, int], list[str]]:
    """The model that ``evaluate`` runs: its predictor, canvas [H, W] and class names."""
    if args.package is not None:
        from model_export.package import OnnxPredictor

        predictor = OnnxPredictor(args.package)
        return predictor, predictor.manifest.canvas, predictor.manifest.categories
    from model_export.checkpoint import load_checkpoint, read_categories
    from model_export.evaluate import eager_predictor

    given = read_categories(args.categories) if args.categories else None
    loaded = load_checkpoint(args.checkpoint, arch=args.arch, categories=given, canvas=args.canvas)
    return eager_predictor(loaded.model), loaded.canvas, loaded.categories
