"""Score new slices with a trained detector.

    python -m pipeline.predict PATH [--model MODEL] [--out scores.csv] [--heatmaps DIR] [--maps DIR]

PATH is an image (PNG, JPEG, DICOM, ...), a CT volume (NIfTI: .nii or .nii.gz, scored axial slice by
axial slice), a folder (searched recursively, images and volumes mixed) or a .zip of either. MODEL is a
detector folder, an MLflow model URI (`runs:/<run id>/detector`, `models:/<name>@<alias>`), or by
default the detector of the last `dvc repro`. The CSV has one row per image and one per slice of a
volume (`slice`: its index, inferior to superior): its score, the label (score > threshold), the
threshold and model that made them, or why the file could not be read. `--maps DIR` writes each
input's anomaly map and anomaly mask on the input's own pixel (or voxel) grid.

The files PATH stands for are claimed by the input kinds of `pipeline.inputs.kinds` (images, volumes,
DICOM series), which score them and write their maps; here they are collected, handed to the kinds,
and their rows written as one CSV.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd

from pipeline.core import hardware
from pipeline.core.config import ArchiveLimits, RuntimeConfig
from pipeline.core.errors import PipelineError, unexpected
from pipeline.core.io import check_output_file, check_output_folder, display_name, remove_tree, write_csv
from pipeline.core.params import params_section
from pipeline.core.progress import progress
from pipeline.data.guards import Limits
from pipeline.detection import maps as maps_io
from pipeline.detection.detector import Detector
from pipeline.inputs.collect import InputFile, collect
from pipeline.inputs.kinds import INPUT_KINDS, Claim, InputKind, Job, MapKey, Scorer
from pipeline.stages.packaging import default_model, load_detector

log = logging.getLogger(__name__)
COLUMNS = ["path", "scan", "slice", "score", "is_anomaly", "threshold", "model", "run_id", "error"]
CHUNK = 64  # files (or a volume's slices) decoded and scored at a time: memory stays flat on large folders


def map_stems(maps: Path, named: list[tuple[MapKey, Path]]) -> dict[MapKey, Path]:
    """Where each input's maps go under `maps`, as a stem that `.map.png`, `.map.nii.gz`, `.seg.dcm`, ...
    complete: its place under PATH (`InputKind.named`), with its full name (`a/b.png`, `a/ct.nii.gz`, a
    series' folder `a/ct`), so that no two inputs share one (a volume `ct.nii.gz` beside a series folder
    `ct/`). A name taken already (several series of one folder beside a folder of that name, or names
    equal but for letter case) gets `~2`, `~3`, ... and a warning."""
    stems: dict[MapKey, Path] = {}
    taken: set[str] = set()
    for key, relative in named:
        stem, copy = relative, 1
        while stem.as_posix().lower() in taken:
            copy += 1
            stem = relative.with_name(f"{relative.name}~{copy}")
        if copy > 1:
            log.warning("%s: its maps are named %s (the name %s is another input's)", key, stem, relative)
        taken.add(stem.as_posix().lower())
        stems[key] = maps / stem
    return stems


def _guarded(job: Job, files: list[InputFile]) -> list[dict]:
    """The job's rows; an exception no reader anticipated (a bug, memory exhausted) gives its inputs an
    error row each instead of ending the run, and is logged with its traceback."""
    try:
        return job.score()
    except Exception as err:  # noqa: BLE001
        log.exception("%s: unexpected error while it was scored", display_name(files[job.orders[0]].path))
        return [{"order": order, "path": files[order].path, "error": unexpected(err)} for order in job.orders]


def _claimed(files: list[InputFile], limits: Limits) -> list[tuple[InputKind, Claim]]:
    """Each registered input kind with its claim on the readable files, in registration order (the order
    of their maps' names and of their jobs); each claims from what the kinds before it left, the kind
    that takes the rest last."""
    kinds = [kind() for _, kind in INPUT_KINDS.items()]
    claims: dict[InputKind, Claim] = {}
    offered = [order for order, item in enumerate(files) if not item.error]
    for kind in sorted(kinds, key=lambda kind: kind.takes_the_rest):
        claims[kind] = claim = kind.claim(files, offered, limits)
        offered = [order for order in offered if order not in claim.taken]
    return [(kind, claims[kind]) for kind in kinds]


def predict(
    detector: Detector,
    files: list[InputFile],
    model: str,
    heatmaps: Path | None = None,
    maps: Path | None = None,
) -> pd.DataFrame:
    """Score every file (every slice of a volume) as the input kind that claims it (`INPUT_KINDS`); one
    that cannot be read or holds nothing to score (`pipeline.data.guards`) gets a row with the reason
    instead of a score. `maps`: a folder for each input's anomaly map and mask on its own pixel grid."""
    if maps is not None:
        check_output_folder(maps, "--maps")
        maps_io.check_detector(detector)
    claimed = _claimed(files, Limits.of(detector.preprocess))
    named = [kind.named(files, each) for kind, claim in claimed for each in claim.inputs]
    stems = map_stems(maps, named) if maps is not None else None
    scorer = Scorer(detector, files, heatmaps, stems, CHUNK)
    jobs = [job for kind, claim in claimed for job in kind.jobs(scorer, claim.inputs)]
    errors = {order: item.error for order, item in enumerate(files) if item.error}
    for _, claim in claimed:
        errors |= claim.refused
    rows = [{"order": order, "path": files[order].path, "error": error} for order, error in errors.items()]
    for job in progress(jobs, desc="predict", unit="batch"):
        rows += _guarded(job, files)
    frame = pd.DataFrame(rows, columns=["order", *COLUMNS]).assign(
        threshold=detector.threshold, model=model, run_id=detector.info.get("run_id", "")
    )
    frame["slice"] = frame["slice"].astype("Int64")
    frame = frame.sort_values(["order", "slice"], na_position="first", kind="stable", ignore_index=True)
    return frame[COLUMNS]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path",
        type=Path,
        help="an image file, a NIfTI volume (.nii, .nii.gz), a folder (searched recursively) or a .zip",
    )
    parser.add_argument(
        "--model",
        help=f"detector folder or MLflow model URI (default: {default_model()}, the last `dvc repro`)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("scores.csv"), help="CSV to write (default: %(default)s)"
    )
    parser.add_argument("--heatmaps", type=Path, help="folder for input / reconstruction / residual figures")
    parser.add_argument(
        "--maps",
        type=Path,
        help="folder for each input's anomaly map and mask on its own pixel grid: <path>.map.png "
        "(16-bit, residual * 65535) and <path>.mask.png (255 = anomalous); a volume's "
        "<case>.map.nii.gz (float32) and <case>.mask.nii.gz (uint8) with its affine",
    )
    return parser.parse_args(argv)


def summary(scores: pd.DataFrame, threshold: float) -> str:
    """What was scored, per input: an image, or a scan (a volume or a DICOM series, flagged when any of
    its slices is)."""
    ok = scores[scores["error"].isna()]
    inputs = ok.assign(input=ok["scan"].fillna(ok["path"]))
    per_input = inputs.groupby("input", sort=False)["is_anomaly"].agg(
        lambda flags: bool(flags.eq(True).any())
    )
    in_scans = ok[ok["scan"].notna()]
    text = (
        f"{len(per_input)} inputs scored, {int(per_input.sum())} flagged as anomalous (threshold "
        f"{threshold:.6g}), {int(scores['error'].notna().sum())} not scored (their reasons above)"
    )
    if len(in_scans):
        text += (
            f"; the {in_scans['scan'].nunique()} scan(s) among them: {len(in_scans)} slices, "
            f"{int(in_scans['is_anomaly'].eq(True).sum())} flagged"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        check_output_file(args.out, "--out")  # every output checked first: no scoring lost at the end
        for option, folder in (("--heatmaps", args.heatmaps), ("--maps", args.maps)):
            if folder is not None:
                check_output_folder(folder, option, inputs=args.path)
        hardware.configure(params_section("runtime", RuntimeConfig).threads)
        model = args.model or str(default_model())
        detector = load_detector(model)
        if args.maps is not None:
            maps_io.check_detector(detector)
        extracted = Path(tempfile.mkdtemp(prefix="predict-"))  # not TemporaryDirectory: its rmtree recurses
        try:
            files = collect(args.path, extracted, params_section("archive", ArchiveLimits))
            scores = predict(detector, files, model, args.heatmaps, args.maps)
        finally:
            remove_tree(extracted)
        write_csv(args.out, scores, for_people=True)
    except (PipelineError, OSError) as err:  # OSError: a file or folder this account cannot read or write
        print(f"error: {err}", file=sys.stderr)
        return 1
    failed = scores["error"].notna()
    for row in scores[failed].itertuples():
        where = "" if pd.isna(row.slice) else f" slice {row.slice}"
        print(f"warning: {display_name(row.path)}{where}: {row.error}", file=sys.stderr)
    log.info("%s: %s", args.out, summary(scores, detector.threshold))
    if failed.all():
        print(
            f"error: none of the {len(scores)} files under {args.path} could be scored",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
