"""Mutation check: each named bug, put into a copy of the project, must make the tests that promise its behaviour fail.

``python -m tests.mutants`` (``make mutants``) copies the working tree (the files git tracks or would track) into a
temporary directory once per mutant, replaces one exact piece of source there, and runs only the tests that must
catch it. The real checkout is never written. First the same tests run on an unmutated copy and must pass: otherwise
a "killed" mutant would prove nothing. Exit status 0 when every mutant is killed.

A mutant's original text must occur exactly once in its file, so that the table cannot rot silently when the code
changes: update the entry (or drop it, with the behaviour it guarded) instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str  # the behaviour the mutant breaks, in words
    file: str  # relative to the repository root
    original: str  # exact text; must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest node ids; at least one must fail


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        name="served-boxes-in-canvas-pixels",
        breaks="/detect maps boxes from canvas pixels back to the uploaded image's pixels",
        file="service/detector.py",
        original="Letterbox(width, height, fit_scale(width, height, self.manifest.canvas))",
        replacement="Letterbox(width, height, 1.0)",
        tests=(
            "tests/service/test_default_package.py::test_served_boxes_find_the_ground_truth_in_image_pixels_at_every_size",
            "tests/service/test_default_package.py::test_served_boxes_scale_with_the_image",
        ),
    ),
    Mutant(
        name="iou-threshold-ignored",
        breaks="the graph's NMS runs at the IoU threshold asked at run time",
        file="service/engines/onnxruntime.py",
        original='"iou_threshold": np.array(iou_threshold, dtype=np.float32)',
        replacement='"iou_threshold": np.array(0.5, dtype=np.float32)',
        tests=("tests/model_export/test_default_model.py::test_package_matches_the_eager_model_at_a_second_iou_threshold",),
    ),
    Mutant(
        name="resume-ignored",
        breaks="--resume goes on from the saved epoch instead of starting over",
        file="model_export/train.py",
        original="state = _resume_state(resume_from) if resume_from else None",
        replacement="state = None",
        tests=("tests/model_export/test_train.py::test_resume_continues_the_saved_optimizer_and_runs_only_the_remaining_epochs",),
    ),
    Mutant(
        name="resume-forgets-the-optimizer",
        breaks="--resume restores the optimizer's moments and step counts",
        file="model_export/train.py",
        original='        optimizer.load_state_dict(state["optimizer"])\n',
        replacement="",
        tests=("tests/model_export/test_train.py::test_resume_continues_the_saved_optimizer_and_runs_only_the_remaining_epochs",),
    ),
    Mutant(
        name="resume-forgets-the-schedule",
        breaks="--resume goes on with the learning-rate schedule from the saved step",
        file="model_export/train.py",
        original='        scheduler.load_state_dict(state["scheduler"])\n',
        replacement="",
        tests=("tests/model_export/test_train.py::test_resume_continues_the_saved_optimizer_and_runs_only_the_remaining_epochs",),
    ),
    Mutant(
        name="resume-without-train-state-starts-over",
        breaks="--resume refuses a checkpoint that has no training state beside it",
        file="model_export/train.py",
        original="    state = load_train_state(checkpoint)\n    if state is None:\n",
        replacement="    state = load_train_state(checkpoint)\n    if False:\n",
        tests=("tests/model_export/test_train.py::test_resume_without_its_train_state_is_refused",),
    ),
    Mutant(
        name="no-wait-batcher-waits-3s",
        breaks="with max_batch_wait_ms=0 a request is run at once, not held for company",
        file="service/batcher.py",
        original="closes = oldest.enqueued + self.policy.max_batch_wait_ms / 1000",
        replacement="closes = oldest.enqueued + (self.policy.max_batch_wait_ms or 3000) / 1000",
        tests=("tests/service/test_batcher.py::test_no_wait_runs_each_request_at_once",),
    ),
    Mutant(
        name="parity-claimed-over-nothing",
        breaks="a parity report that compared no detections claims no parity",
        file="model_export/parity.py",
        original="return self.matched / self.compared if self.compared else 0.0",
        replacement="return self.matched / self.compared if self.compared else 1.0",
        tests=("tests/model_export/test_parity.py::test_a_comparison_of_nothing_claims_no_parity",),
    ),
    Mutant(
        name="exporter-accepts-an-empty-parity-check",
        breaks="the exporter refuses, by name, a parity check that compared nothing",
        file="model_export/export.py",
        original="    if report.compared == 0:\n",
        replacement="    if False:\n",
        tests=("tests/model_export/test_parity.py::test_the_exporter_refuses_a_parity_check_that_compared_nothing",),
    ),
    Mutant(
        name="synth-occlusion-unbounded",
        breaks="a synthetic shape keeps at least half of its pixels visible",
        file="model_export/synth.py",
        original="< MIN_VISIBLE_FRACTION * o.full_area for o in objects",
        replacement="< 0.05 * o.full_area for o in objects",
        tests=("tests/model_export/test_synth.py::test_occluded_objects_keep_half_of_their_pixels",),
    ),
    Mutant(
        name="vertical-flip-by-the-width",
        breaks="augmented boxes stay on the canvas, vertically too",
        file="model_export/train.py",
        original="height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]",
        replacement="width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]",
        tests=("tests/model_export/test_train.py::test_augmented_boxes_stay_on_the_canvas",),
    ),
    Mutant(
        name="per-class-ap-under-wrong-names",
        breaks="the evaluation report gives each class its own AP",
        file="model_export/evaluate.py",
        original="for k, name in enumerate(names)}",
        replacement="for k, name in enumerate(names[::-1])}",
        tests=("tests/model_export/test_evaluate.py::test_per_class_ap_belongs_to_its_class",),
    ),
    Mutant(
        name="empty-class-list-kept",
        breaks="/detect and v2 both refuse a class list that names no class",
        file="service/options.py",
        original="    if not names:\n",
        replacement="    if False:\n",
        tests=("tests/service/test_kserve.py::test_detect_and_v2_refuse_the_same_bad_options",),
    ),
    Mutant(
        name="v2-unready-without-its-reason",
        breaks="the v2 unready answer carries the reason /health/ready gives",
        file="service/kserve/endpoints.py",
        original='JSONResponse({"error": problem}, status_code=400)',
        replacement='JSONResponse({"error": "not ready"}, status_code=400)',
        tests=("tests/service/test_kserve.py::test_a_draining_server_says_why_it_is_unready_in_both_protocols",),
    ),
    Mutant(
        name="fuzz-excuses-any-504-with-a-deadline",
        breaks="the fuzz test excuses a 504 only when the request's own deadline had passed",
        file="tests/service/test_fuzz.py",
        original="return deadline_s is not None and deadline_s <= elapsed_s",
        replacement="return deadline_s is not None",
        tests=("tests/service/test_fuzz.py::test_a_504_is_excused_only_by_the_request_own_deadline_passing",),
    ),
    Mutant(
        name="auto-serves-a-precision-that-loses-detections",
        breaks="DETECTOR_PRECISION=auto serves a reduced precision only if it finds again the float graph's detections here",
        file="service/engines/choice.py",
        original="    if recall < needed:",
        replacement="    if recall < 0:",
        tests=("tests/service/test_engine_choice.py::test_a_candidate_that_loses_detections_is_refused_and_the_float_graph_served",),
    ),
    Mutant(
        name="training-pools-with-torchvision",
        breaks="training pools the box head's RoIs with roi_align_by_bags, torchvision's numbers at a faster backward",
        file="model_export/train.py",
        original="        with bags_roi_align(model):",
        replacement="        if True:",
        tests=("tests/model_export/test_train.py::test_training_pools_with_bags_samples_box_batch_rois_and_leaves_torchvision_pooler",),
    ),
    Mutant(
        name="bags-read-past-the-feature-map",
        breaks="roi_align_by_bags reads nothing for sample points off the feature map, as torchvision's RoIAlign",
        file="model_export/roi_align_bags.py",
        original="inside = ((coords >= -1) & (coords <= size)).to(coords.dtype)",
        replacement="inside = torch.ones_like(coords)",
        tests=("tests/model_export/test_roi_align_bags.py::test_values_and_gradients_equal_torchvision",),
    ),
)


class MutantTableError(RuntimeError):
    """A mutant's original text is not where the table says: the code changed and the entry must follow."""


@dataclass(frozen=True)
class Outcome:
    name: str
    verdict: str  # killed, survived, error (the tests could not run: collection error, timeout, ...)
    seconds: float
    output: str


def project_files(repo: Path) -> list[str]:
    """What git tracks or would track (untracked files that no .gitignore rule hides), as paths relative to ``repo``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo, check=True, capture_output=True
    ).stdout
    names = sorted({name for name in listed.decode().split("\0") if name})
    return [name for name in names if (repo / name).is_file()]  # a tracked file deleted in the work tree is left out


def copy_project(repo: Path, files: Iterable[str], into: Path) -> None:
    for name in files:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)


def mutated_text(mutant: Mutant, text: str) -> str:
    count = text.count(mutant.original)
    if count != 1:
        raise MutantTableError(
            f"mutant {mutant.name}: its original text occurs {count} times in {mutant.file}, not once: {mutant.original!r}"
        )
    return text.replace(mutant.original, mutant.replacement)


def check_table(repo: Path, mutants: Sequence[Mutant]) -> None:
    """Every original text occurs exactly once, and names are unique: checked before anything runs."""
    names = [mutant.name for mutant in mutants]
    if len(set(names)) != len(names):
        raise MutantTableError(f"mutant names repeat: {sorted(n for n in names if names.count(n) > 1)}")
    for mutant in mutants:
        mutated_text(mutant, (repo / mutant.file).read_text())


def run_tests(root: Path, tests: Sequence[str], threads: int) -> tuple[int, str, float]:
    """pytest on ``tests`` inside the copy ``root``: its modules, not the editable install's, are the ones imported."""
    # Runs side by side share the cores: each of torch's and OpenMP's pools gets its share, not all of them.
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        partial = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout or ""
        return -1, f"timed out after {RUN_TIMEOUT_S} s\n{partial}", time.monotonic() - started
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def run_in_copy(repo: Path, files: Sequence[str], tests: Sequence[str], mutant: Mutant | None, threads: int) -> tuple[int, str, float]:
    with tempfile.TemporaryDirectory(prefix="mutant-") as scratch:
        root = Path(scratch)
        copy_project(repo, files, root)
        if mutant is not None:
            target = root / mutant.file
            target.write_text(mutated_text(mutant, target.read_text()))
        return run_tests(root, tests, threads)


def try_mutant(repo: Path, files: Sequence[str], mutant: Mutant, threads: int) -> Outcome:
    code, output, seconds = run_in_copy(repo, files, mutant.tests, mutant, threads)
    # pytest exits 1 when tests failed; 0 is a survivor; anything else (2 interrupted, 4 usage, 5 no tests, -1 timeout) means
    # the tests never judged the mutant, which is no kill.
    verdict = {0: "survived", 1: "killed"}.get(code, "error")
    return Outcome(mutant.name, verdict, seconds, output)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant only (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--list", action="store_true", help="list the mutants and the tests that must catch them")
    parser.add_argument("--show", action="store_true", help="print how each mutant was caught (the end of pytest's output)")
    args = parser.parse_args(argv)

    known = {mutant.name: mutant for mutant in MUTANTS}
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; known: {sorted(known)}")
    mutants = [known[name] for name in args.only] if args.only else list(MUTANTS)
    check_table(REPO, mutants)
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name}: {mutant.breaks} ({mutant.file})\n    " + "\n    ".join(mutant.tests))
        return 0

    files = project_files(REPO)
    tests = list(dict.fromkeys(test for mutant in mutants for test in mutant.tests))
    print(f"baseline: {len(tests)} tests on an unmutated copy of {len(files)} files", flush=True)
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    code, output, seconds = run_in_copy(REPO, files, tests, None, threads)
    if code != 0:
        print(f"the tests fail without any mutant (exit {code}, {seconds:.0f} s); a kill would mean nothing:\n{_tail(output)}")
        return 2
    print(f"baseline passed in {seconds:.0f} s", flush=True)

    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for outcome in pool.map(lambda mutant: try_mutant(REPO, files, mutant, threads), mutants):
            print(f"{outcome.verdict:>8}  {outcome.seconds:6.0f} s  {outcome.name}", flush=True)
            if outcome.verdict != "killed" or args.show:
                print(_tail(outcome.output, 12 if outcome.verdict == "killed" else 25))
            outcomes.append(outcome)
    alive = [outcome.name for outcome in outcomes if outcome.verdict != "killed"]
    print(f"{len(outcomes) - len(alive)} of {len(outcomes)} mutants killed" + (f"; not killed: {', '.join(alive)}" if alive else ""))
    return 1 if alive else 0


if __name__ == "__main__":
    sys.exit(main())
