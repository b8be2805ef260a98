"""The ``kpconv`` command line. Each command checks its options, calls one library function and
prints a short summary on stderr. Library errors (``KpconvError``) become a one-line message and
exit code 1; misused options exit 2 (Click). TensorFlow is imported only inside the commands that
need it, so ``kpconv --help`` and ``kpconv ingest`` start fast.
"""
from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import click

from . import __version__
from .errors import KpconvError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KpconvError as e:
            raise _Failure(str(e), getattr(e, "exit_code", 1)) from None


class _Failure(click.ClickException):
    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None):
        click.echo(f"kpconv: error: {self.format_message()}", err=True)


MAX_WORKERS = 512     # --workers above this is a typo, not a machine


class _FloatRange(click.FloatRange):
    """click.FloatRange that refuses NaN (which passes every range comparison) and infinities."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return rv


def info(ctx: click.Context, message: str) -> None:
    """A summary line on stderr, unless --quiet (stdout is kept for data, e.g. a manifest)."""
    if not ctx.find_root().obj.get("quiet"):
        click.echo(message, err=True)


def _set_verbosity(ctx, param, value):
    if value:
        root = ctx.find_root()
        root.obj = root.obj or {}
        root.obj[param.name] = True
        if param.name == "quiet":
            from . import progress

            progress.set_enabled(False)
    return value


def verbosity_options(f):
    """-q/-v after the command too (``kpconv predict -q ...`` as ``kpconv -q predict ...``)."""
    f = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbosity,
                     help="Print more detail (as 'kpconv -v').")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity,
                        help="Print only errors (as 'kpconv -q').")(f)


def command(*args, **kwargs):
    """``@cli.command`` with -q/-v after the command and the context passed first."""
    def decorator(f):
        return cli.command(*args, **kwargs)(verbosity_options(click.pass_context(f)))
    return decorator


def _parsed_by(module: str, name: str):
    """A Click callback: the option's text through ``kpconv.<module>.<name>`` (imported when used),
    a ValueError becoming a usage error (exit 2)."""
    def callback(ctx, param, value):
        if value is None:
            return None
        parse = getattr(importlib.import_module(f".{module}", __package__), name)
        try:
            return parse(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return callback


def _beam_log_level(ctx) -> None:
    """Apache Beam logs through Python's logging: warnings by default, errors only with -q (its worker
    processes log on their own: with -q their lines below ERROR are filtered out of stderr)."""
    import logging

    from . import quiet

    root = ctx.find_root().obj
    if root.get("quiet"):
        quiet.filter_stderr(python_logs=True)
    logging.getLogger("apache_beam").setLevel(logging.ERROR if root.get("quiet") else
                                              logging.INFO if root.get("verbose") else logging.WARNING)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="kpconv")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors; no progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Print more detail (every problem, timings).")
@click.pass_context
def cli(ctx, quiet, verbose):
    """kpconv: keypoint annotations -> manifest -> TFRecord shards -> trained keypoint regressor.

    \b
    kpconv ingest labels.csv --images imgs -o data.jsonl
    kpconv shard data.jsonl -o shards/
    kpconv train shards/ -o run/
    """
    from . import progress

    ctx.obj = {"quiet": quiet, "verbose": verbose}
    if quiet:
        progress.set_enabled(False)


# ----------------------------------------------------------------------------------------- ingest
def _format_choices():
    from .data.formats import KNOWN

    return ["auto", *KNOWN]


@command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-f", "--format", "fmt", type=click.Choice(_format_choices()), default="auto", show_default=True,
              help="Annotation format; 'auto' detects it from the content.")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Folder the image paths are relative to. Default: the source's own folder "
                   "(DeepLabCut: where the listed images are, the project folder).")
@click.option("-o", "--output", default="-", show_default=True, metavar="FILE|-",
              help="Manifest to write (JSON Lines); '-' is stdout.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write every problem found, one JSON object per line.")
@click.option("--strict", is_flag=True, help="Exit 1 on any problem, writing nothing.")
@click.option("--category", help="The category to read (COCO category name or id, CVAT skeleton label, YOLO class "
                                   "name or id); default: all that share the keypoints, each record keeping its "
                                   "'category'.")
@click.option("--keypoints", callback=_parsed_by("keypoints", "parse_names"), metavar="A,B,C",
              help="Keypoint names and their order (default: from the annotations).")
@click.option("--flip-pairs", callback=_parsed_by("keypoints", "parse_pairs"), metavar="L:R,...",
              help="Left/right keypoint pairs for horizontal flips (default: from the source or the names).")
@click.option("--skeleton", callback=_parsed_by("keypoints", "parse_edges"), metavar="A-B,...",
              help="Skeleton edges by keypoint name ('a:b' where a name holds '-'); replaces the source's "
                   "(for CSV, Labelme, YOLO, ... that state none).")
@click.option("--allow-outside-root", is_flag=True,
              help="Accept image paths outside the images root ('../', absolute paths).")
@click.option("--frames-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="SLEAP: folder the labelled video frames are extracted to (once, as PNG), and the default "
                   "images root. Default: <manifest stem>-frames beside the manifest.")
def ingest(ctx, sources, fmt, images, output, report_path, strict, category, keypoints, flip_pairs,
           skeleton, allow_outside_root, frames_dir):
    """Read keypoint annotations and write one canonical manifest (JSON Lines).

    SOURCES are annotation files or a dataset folder (Labelme folder, YOLO dataset, DeepLabCut
    project, CVAT export). Formats: COCO keypoints JSON, CSV tables (wide or long), CVAT XML (images
    or video), DeepLabCut CollectedData CSV or .h5, dlib imglab XML, kpconv JSON / JSON Lines, Label
    Studio JSON / JSON-MIN, Labelme JSON, SLEAP .slp (frames extracted to --frames-dir), YOLO pose.
    See docs/formats.md.

    Bad records are skipped and counted (summary on stderr, full list in --report); the exit code
    is 0 when at least one record was written. The output is written atomically.
    """
    from .data.formats.base import IngestOptions
    from .data.ingest import ingest as run_ingest

    options = IngestOptions(category=category, keypoints=keypoints, flip_pairs=flip_pairs, skeleton=skeleton,
                            allow_outside_root=allow_outside_root, frames_dir=frames_dir)
    try:
        result = run_ingest(sources, output=output, fmt=fmt, images=images, options=options,
                            strict=strict, report_path=report_path)
    except KpconvError as e:
        problems = getattr(e, "problems", None)
        failed_report = getattr(e, "report", None)
        if failed_report is not None and failed_report.counts:
            info(ctx, failed_report.summary_table())
        if problems and ctx.obj.get("verbose"):
            for p in problems:
                click.echo(f"  {p}", err=True)
        raise
    where = "stdout" if output == "-" else output
    info(ctx, f"ingest: {result.format}: wrote {result.written} record(s) from {result.images} image(s) "
              f"to {where}; skipped {result.skipped}")
    if result.report.counts:
        info(ctx, result.report.summary_table())
        if ctx.obj.get("verbose"):
            for p in result.report.first:
                click.echo(f"  {p}", err=True)
        elif not report_path:
            first = result.report.first_failing() or result.report.first[0]
            info(ctx, f"first: {first}\n(use --report FILE for the full list, -v to print them)")


# ------------------------------------------------------------------------------------------ shard
@command()
@click.argument("manifest", metavar="MANIFEST|-")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), metavar="OUT_DIR",
              help="Directory for the shards and dataset_info.json.")
@click.option("--image-size", default="224", show_default=True, callback=_parsed_by("shard", "parse_image_size"),
              metavar="224|WxH|none", help="Stored image size; 'none' keeps the (cropped) original size.")
@click.option("--resize", type=click.Choice(["stretch", "pad"]), default="stretch", show_default=True,
              help="stretch: scale to the size exactly; pad: keep the aspect ratio and letterbox.")
@click.option("--crop", type=click.Choice(["none", "bbox"]), default="none", show_default=True,
              help="bbox: cut each instance's box (enlarged by --crop-pad) out of the image.")
@click.option("--crop-pad", type=_FloatRange(min=0, max=10), default=0.2, show_default=True,
              help="Growth of the box for --crop bbox, as a fraction of its width/height (half on each side).")
@click.option("--split", callback=_parsed_by("shard", "parse_split"), metavar="NAME=FRAC,...",
              help="Assign splits by a hash (see --split-by) (default: the source's split if any, "
                   "else train=0.8,val=0.1,test=0.1).")
@click.option("--split-by", type=click.Choice(["auto", "group", "image"]), default="auto", show_default=True,
              help="What the split hash keeps together: group (frames of one video; else the image), image "
                   "(the instances of one image), or auto: group when the groups fill every split, else image.")
@click.option("--shard-size", callback=_parsed_by("shard", "parse_bytes"), metavar="SIZE",
              help="Aimed bytes per shard, e.g. 500KB, 1GiB. Default: 64MB, and at least 8 shards for "
                   "splits of 800 records or more.")
@click.option("--num-shards", type=click.IntRange(min=1), help="Shards per split (instead of --shard-size).")
@click.option("--workers", type=click.IntRange(min=0, max=MAX_WORKERS), default=0,
              help="Writer processes (0: number of CPUs). Does not change the output.")
@click.option("--seed", type=int, default=0, show_default=True, help="Salt of the split and order hashes.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="JPEG quality of re-encoded images.")
@click.option("--compression", type=click.Choice(["none", "gzip"]), default="none", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the shards of an existing OUT_DIR.")
@click.option("--resume", is_flag=True, help="Keep complete, correct shards of an interrupted run; write the rest.")
@click.option("--allow-outside-root", is_flag=True,
              help="Read manifest image paths that resolve (symlinks followed) outside the manifest's images_root.")
@click.option("--runner", type=click.Choice(["local", "beam"]), default="local", show_default=True,
              help="local: this machine's processes; beam: an Apache Beam pipeline (same shards; paths may be "
                   "gs://, s3://, hdfs://...; needs pip install 'kpconv[beam]').")
@click.option("--beam-option", "beam_options", multiple=True, metavar="KEY=VALUE",
              help="A Beam pipeline option for --runner beam, repeatable: runner=FlinkRunner, "
                   "temp_location=gs://..., direct_running_mode=in_memory. Default: DirectRunner, "
                   "multi_processing, --workers processes.")
def shard(ctx, manifest, out_dir, image_size, resize, crop, crop_pad, split, split_by, shard_size, num_shards, workers,
          seed, quality, compression, overwrite, resume, allow_outside_root, runner, beam_options):
    """Convert a manifest (a file, or '-' for stdin) into TFRecord shards.

    Writes OUT_DIR/<split>.tfrecord-NNNNN-of-NNNNN, skipped.jsonl (records whose image could not be
    converted, with the reason), changed.jsonl (records whose keypoints outside the stored image were
    made unlabelled, which ones) and, last, dataset_info.json. The shards are byte-identical for any
    --workers and any run. Exit code 0 when at least one record was written.
    """
    from .data.images import ImageOptions
    from .data.shard import ShardOptions, shard as run_shard

    if shard_size is not None and num_shards is not None:
        raise click.BadParameter("give --shard-size or --num-shards, not both", param_hint="--num-shards")
    if overwrite and resume:
        raise click.BadParameter("give --overwrite or --resume, not both", param_hint="--resume")
    options = ShardOptions(image=ImageOptions(size=image_size, resize=resize, crop=crop, crop_pad=crop_pad,
                                              quality=quality),
                           split=split, split_by=split_by, shard_size=shard_size, num_shards=num_shards,
                           workers=workers, seed=seed, compression=compression, overwrite=overwrite, resume=resume,
                           allow_outside_root=allow_outside_root)
    if beam_options and runner != "beam":
        raise click.BadParameter("needs --runner beam", param_hint="--beam-option")
    if runner == "beam":
        from .data.shard.beam import BeamOptionError, shard_beam

        _beam_log_level(ctx)
        try:
            result = shard_beam(manifest, out_dir, options, beam_options)
        except BeamOptionError as e:   # raised before anything is read or written
            raise click.BadParameter(str(e), param_hint="--beam-option") from None
    else:
        result = run_shard(manifest, out_dir, options)
    for note in result.notes:
        info(ctx, f"shard: {note}")
    for warning in result.warnings:   # also kept in dataset_info.json ("warnings"), -q or not
        info(ctx, f"kpconv: warning: {warning}")
    parts = ", ".join(f"{name} {s['records']} in {len(s['shards'])} shard(s)" for name, s in result.info["splits"].items())
    info(ctx, f"shard: wrote {result.written} record(s) to {out_dir} ({parts}); skipped {result.skipped}"
              + (f" (see {out_dir}/skipped.jsonl)" if result.skipped else "")
              + (f"; {result.changed} record(s) with keypoints outside the stored image, made unlabelled (see "
                 f"{out_dir}/changed.jsonl)" if result.changed else ""))
    if resume:
        info(ctx, f"resume: kept {result.kept_shards} complete shard(s), wrote {result.written_shards}")


@command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False), metavar="OUT_DIR")
@click.option("--verify", is_flag=True, help="Read every record: CRCs, sha256, spec, every image decodes.")
@click.option("--grid", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Draw a contact sheet of records with keypoints, names and skeleton (left red, right blue).")
@click.option("--n", "n", type=click.IntRange(min=1, max=1024), default=16, show_default=True,
              help="Records in the contact sheet.")
def inspect(ctx, out_dir, verify, grid, n):
    """Show what a 'kpconv shard' directory holds: splits, counts, image size, keypoints and their
    visibility rates. --verify exits 1 naming the first bad shard and record."""
    from .inspect import inspect as run_inspect

    result = run_inspect(out_dir, verify_records=verify, grid=grid, n=n)
    click.echo("\n".join(result.lines))
    if verify:
        click.echo(f"verify: {result.verified} record(s) OK (CRCs, sha256, spec, images decode)")
    if grid:
        info(ctx, f"inspect: wrote contact sheet {grid}")


# ---------------------------------------------------------------------------- train / eval / predict
_run_dir = click.argument("run_dir", type=click.Path(exists=True, file_okay=False), metavar="RUN_DIR")
_flip_test = click.option("--flip-test/--no-flip-test", default=None,
                          help="Average the heatmaps of each image and of its mirror (left/right keypoints swapped). "
                               "Default: on for a heatmap run trained with flips (its keypoints have flip pairs).")


def _range(value, name, lo, hi):
    """``"LO,HI"`` -> ``(lo, hi)`` floats with ``lo <= hi`` inside ``[lo, hi]`` bounds (exit 2 otherwise)."""
    if value is None:
        return None
    try:
        a, b = (float(v) for v in value.split(","))
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(value)
    except ValueError:
        raise click.BadParameter(f"expected LO,HI (two numbers), got '{value}'", param_hint=name) from None
    if not (lo <= a <= b <= hi):
        raise click.BadParameter(f"expected {lo:g} <= LO <= HI <= {hi:g}, got '{value}'", param_hint=name)
    return (a, b)


def _quiet_tf(ctx: click.Context) -> None:
    """Before TensorFlow is imported: its log levels, and its C++ start-up lines filtered out of
    stderr (see kpconv.quiet), unless -v."""
    from . import quiet

    verbose = bool(ctx.find_root().obj.get("verbose"))
    quiet.quiet_tensorflow(verbose)
    if not verbose:
        quiet.filter_stderr()


@command()
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False), metavar="SHARD_DIR")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False), metavar="RUN_DIR",
              help="Run directory: config.json, model.keras, saved_model/, history.csv, checkpoints/.")
@click.option("--head", type=click.Choice(["heatmap", "spatial", "dense"]), default="heatmap", show_default=True,
              help="heatmap: Gaussian heatmaps at --heatmap-stride, sub-pixel peak and a calibrated confidence; "
                   "spatial: soft-argmax over upsampled heatmaps; dense: pooling + dense layers (2K outputs).")
@click.option("--backbone", type=click.Choice(["unet", "unet5", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                                               "efficientnet_b0", "efficientnet_v2_b0"]),
              help="Default: unet (small, from scratch) with --weights none, mobilenet_v2 otherwise. unet5: unet "
                   "with a fifth level (stride 32, twice the receptive field).")
@click.option("--alpha", type=_FloatRange(min=0.1, max=1.4),
              help="Width multiplier of the backbone (MobileNet, unet). Default: 1, or the run's with "
                   "--weights RUN_DIR.")
@click.option("--weights", default="imagenet", show_default=True, metavar="imagenet|none|PATH|RUN_DIR",
              help="Start from Keras's ImageNet weights, random weights (none), a backbone weights file, or "
                   "another kpconv run (its directory or model.keras: every matching layer is copied, the output "
                   "layer is new when the keypoints differ).")
@click.option("--time-limit", type=_FloatRange(min=0, min_open=True), metavar="MINUTES",
              help="Train as many epochs as fit in MINUTES, the learning-rate schedule laid out over the budget; "
                   "the best model is kept.")
@click.option("--epochs", type=click.IntRange(min=1),
              help="Epochs (with pretrained weights: the warm-up included; with --fine-tune-epochs: with the "
                   "backbone frozen). Default: 30, or as many as fit with --time-limit.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=2, show_default=True,
              help="ImageNet or file weights: epochs training the head with the backbone frozen, before the "
                   "whole network trains for the rest of --epochs or --time-limit.")
@click.option("--fine-tune-epochs", type=click.IntRange(min=0),
              help="ImageNet or file weights: --epochs with the backbone frozen, then this many with it "
                   "trainable (instead of the warm-up, then the rest).")
@click.option("--fine-tune-from", metavar="LAYER", help="Unfreeze the backbone from this layer on (default: all).")
@click.option("--fine-tune-learning-rate", type=_FloatRange(min=0, min_open=True),
              help="Learning rate once the backbone trains (ImageNet or file weights; default: --learning-rate "
                   "/ 10), with --time-limit too.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: 8 (heatmap), 32 (spatial, dense).")
@click.option("--learning-rate", type=_FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--heatmap-stride", type=click.Choice(["2", "4", "8"]),
              help="Heatmap head: input pixels per heatmap cell. Default: 4, or the run's with --weights RUN_DIR.")
@click.option("--sigma", type=_FloatRange(min=0.25, max=20), default=2.0, show_default=True,
              help="Heatmap head: standard deviation of the Gaussian targets, in heatmap cells.")
@click.option("--crop-size", type=click.IntRange(min=0),
              help="Heatmap head: train on random square crops of this size around the keypoints "
                   "(default 128; 0: whole frames). Prediction always sees whole frames.")
@click.option("--input-scale", type=_FloatRange(min=0, max=4, min_open=True), metavar="FACTOR",
              help="Heatmap head with crops: frames resized by FACTOR before the network, in training (the crops) "
                   "and prediction. Default: auto, so the median instance is at most 200 network pixels across "
                   "(1 for smaller ones).")
@click.option("--loss", type=click.Choice(["mse", "weighted-mse", "mae", "huber"]), default="mse",
              show_default=True, help="Masked by visibility: unlabelled keypoints count for nothing.")
@click.option("--keypoint-weights", metavar="W,W,...|NAME=W,...", help="Per-keypoint weights for weighted-mse.")
@click.option("--huber-delta", type=_FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="Huber threshold, in normalized image units.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Flip (swapping left/right pairs), rotation, scale, translation, colour.")
@click.option("--augment-rotate", type=_FloatRange(min=0, max=180), metavar="DEGREES",
              help="Random rotation up to +-DEGREES (default: 25 heatmap, 20 others).")
@click.option("--augment-scale", callback=lambda c, p, v: _range(v, "--augment-scale", 0.1, 10), metavar="LO,HI",
              help="Random scale factor range (default: 0.8,1.2 heatmap; 0.85,1.15 others).")
@click.option("--augment-flip", type=_FloatRange(min=0, max=1), metavar="P",
              help="Horizontal flip probability, left/right pairs swapped (default: 0.5 when the keypoints have "
                   "flip pairs, else 0).")
@click.option("--augment-translate", type=_FloatRange(min=0, max=1), metavar="FRACTION",
              help="Random shift up to +-FRACTION of the size (default: 0 with crops, 0.08 otherwise).")
@click.option("--augment-brightness", type=_FloatRange(min=0, max=1), default=0.15, show_default=True,
              metavar="FRACTION", help="Random brightness offset up to +-FRACTION of 255.")
@click.option("--augment-contrast", callback=lambda c, p, v: _range(v, "--augment-contrast", 0, 10),
              default="0.75,1.25", show_default=True, metavar="LO,HI", help="Random contrast factor range.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--calibration-holdout", type=_FloatRange(min=0, max=0.5), default=0.05, show_default=True,
              metavar="FRACTION", help="Heatmap head without a validation split: this fraction of the training "
                                       "images is kept out of training to calibrate the confidence on (0: "
                                       "calibrate on the training frames).")
@click.option("--patience", type=click.IntRange(min=1), default=10, show_default=True,
              help="Early stopping: epochs without improvement of the validation pixel error (the training "
                   "loss without a validation split).")
@click.option("--val-split", default="auto", show_default=True,
              help="Split used for validation ('auto': val if present; 'none': no validation).")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), help="Batches per epoch (default: the whole split).")
@click.option("--mixed-precision", is_flag=True, help="float16 (GPU) / bfloat16 (CPU) compute.")
@click.option("--strategy", type=click.Choice(["default", "mirrored"]), default="default", show_default=True,
              help="mirrored: every visible GPU (tf.distribute.MirroredStrategy).")
@click.option("--export", "exports", multiple=True, type=click.Choice(["tflite", "tflite-fp16", "tflite-int8", "onnx"]),
              help="Also export the model as 'kpconv export --format ...' does (repeatable; the SavedModel "
                   "is always written).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in RUN_DIR with its own options.")
@click.option("--multi-instance", "multi_instance", type=click.Choice(["auto", "yes", "no"]), default="auto",
              show_default=True,
              help="Train the multi-instance pair (a centroid model on downscaled frames and a centred-instance "
                   "model on crops, docs/multi-instance.md). auto: when an image of the shards holds several "
                   "instances.")
def train(ctx, shard_dir, run_dir, keypoint_weights, heatmap_stride, exports, resume, multi_instance, **options):
    """Train a keypoint model on the shards of SHARD_DIR (written by 'kpconv shard').

    About 100 labelled frames, no pretrained weights, a CPU (the small-data recipe: a small
    from-scratch network, heatmaps, random crops, strong augmentation):

    \b
    kpconv train shards/ -o run/ --weights none --time-limit 15

    \b
    kpconv train shards/ -o run/ --weights imagenet --epochs 30      # MobileNetV2, with internet
    kpconv train shards/ -o run2/ --weights run/ --time-limit 10     # fine-tune from a previous run
    kpconv train shards/ -o run/ --resume
    """
    _quiet_tf(ctx)
    from .errors import TrainError
    from .data.dataset_info import DatasetInfo, read_dataset_info
    from .model.train import TrainOptions, parse_keypoint_weights, train as run_train

    ds_info = DatasetInfo.read(shard_dir)
    multi = multi_instance == "yes" or (multi_instance == "auto" and not resume and
                                        ds_info.max_instances > 1)
    if multi and resume:
        raise click.BadParameter("multi-instance runs cannot be resumed; train again into a new RUN_DIR",
                                 param_hint="--resume")

    kw = None
    if keypoint_weights:
        try:
            kw = parse_keypoint_weights(keypoint_weights, read_dataset_info(shard_dir).keypoint_names)
        except TrainError as e:     # a bad option value: exit 2
            raise click.BadParameter(str(e).removeprefix("--keypoint-weights: "),
                                     param_hint="--keypoint-weights") from None
    root = ctx.find_root().obj
    verbose = 0 if root.get("quiet") else (1 if sys.stdout.isatty() else 2)
    # every other option has the name of its TrainOptions field
    options = TrainOptions(**options, keypoint_weights=kw, export=list(exports), verbose=verbose,
                           heatmap_stride=None if heatmap_stride is None else int(heatmap_stride))
    if multi:
        from .model.multi import train_multi

        config = train_multi(shard_dir, run_dir, options, log=lambda m: info(ctx, m))
        for st in config["stages"]:
            info(ctx, f"train: {st['name']} stage: {st['epochs']} epoch(s), final loss {st['final_loss']:.5g} "
                      f"-> {Path(run_dir) / st['model']}")
        return
    result = run_train(shard_dir, run_dir, None if resume else options, resume=resume)
    best = "-" if result.best is None else f"{result.best:.5g}"
    info(ctx, f"train: {result.epochs_run} epoch(s)"
              + (f" (resumed after epoch {result.resumed_from})" if result.resumed_from else "")
              + f"; best {result.monitor} {best}")
    for name, path in result.outputs.items():
        info(ctx, f"  {name}: {path}")


@command("eval")
@_run_dir
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False), metavar="SHARD_DIR")
@click.option("--split", default="test", show_default=True, help="Split of SHARD_DIR to evaluate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write every figure as JSON ('-': stdout).")
@click.option("--min-confidence", type=_FloatRange(min=0, max=1), default=0.5, show_default=True,
              help="Also report the error of keypoints predicted with at least / less than this confidence "
                   "(models with a confidence: the heatmap head).")
@click.option("--grid", type=click.Path(dir_okay=False), metavar="PNG",
              help="Also draw a contact sheet of the split: predictions (dots, skeleton) over the labelled "
                   "truth (rings), a line from each to the other.")
@click.option("--n", "grid_n", type=click.IntRange(min=1), default=16, show_default=True,
              help="Records on the --grid sheet.")
@_flip_test
@click.option("--oks-sigma", type=_FloatRange(min=0, min_open=True), metavar="SIGMA",
              help="Multi-instance runs: one OKS sigma for every keypoint (default: COCO's per-keypoint sigmas "
                   "for the 17 COCO person keypoints, else 0.07).")
def eval_(ctx, run_dir, shard_dir, split, batch_size, json_path, min_confidence, grid, grid_n, flip_test, oks_sigma):
    """Evaluate a trained run: masked MSE, mean/median error in original image pixels,
    PCK@0.05/0.1/0.2 (normalized by the box, or the image without one), NME, per keypoint."""
    _quiet_tf(ctx)
    from .model.evaluate import evaluate
    from .model.metrics import format_table
    from .model.multi import evaluate_multi, format_multi, run_is_multi

    if run_is_multi(run_dir):
        result = evaluate_multi(run_dir, shard_dir, split=split, oks_sigma=oks_sigma, json_path=json_path)
        if json_path != "-":
            click.echo(format_multi(result))
        return

    result = evaluate(run_dir, shard_dir, split=split, batch_size=batch_size, json_path=json_path,
                      min_confidence=min_confidence, grid=grid, grid_n=grid_n, flip_test=flip_test)
    if json_path != "-":
        click.echo(f"{split}: {result['instances']} instance(s), {result['keypoints']} labelled keypoint(s); "
                   f"masked MSE {result['overall']['masked_mse']:.6f} (normalized units)")
        click.echo(format_table(result))
        c = result.get("confidence")
        if c:
            for side, label in (("above", ">="), ("below", "<")):
                b = c[side]
                err = "-" if b["count"] == 0 else f"{b['mean_error_px']:.2f} px mean, PCK@0.1 {b['pck@0.1']:.3f}"
                click.echo(f"confidence {label} {c['threshold']:g}: {b['count']} labelled keypoint(s), {err}")
            if c["unlabelled"]:
                click.echo(f"unlabelled keypoints predicted with confidence >= {c['threshold']:g}: "
                           f"{c['unlabelled_above']:.1%} of {c['unlabelled']}")
    if json_path and json_path != "-":
        info(ctx, f"eval: wrote {json_path}")
    if grid:
        info(ctx, f"eval: contact sheet of {result['grid']['records']} record(s), predictions over the truth: {grid}")


def _bbox(ctx, param, value):
    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or not all(math.isfinite(v) for v in parts) or parts[2] <= 0 or parts[3] <= 0:
        raise click.BadParameter(f"expected x,y,w,h in pixels with w, h > 0, got '{value}'")
    return parts


@command()
@_run_dir
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True), metavar="INPUT...")
@click.option("--bbox", callback=_bbox, metavar="x,y,w,h",
              help="One instance's box in original pixels, for every input (runs trained with --crop bbox; "
                   "default: the whole image).")
@click.option("--boxes", "boxes_path", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Boxes per image or frame: COCO detection results JSON, or CSV image,x,y,w,h[,score]; "
                   "one prediction per box (runs trained with --crop bbox).")
@click.option("-o", "--output", default="-", show_default=True, metavar="FILE|-", help="Where to write.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "dlc", "dlc-h5", "coco", "slp"]),
              help="Default: from -o's suffix (.h5: dlc-h5, .slp: slp), else jsonl. dlc: DeepLabCut's CSV layout "
                   "(x, y, likelihood); dlc-h5: the same table as DeepLabCut's .h5 (needs kpconv[h5]); coco: COCO "
                   "results; slp: SLEAP predictions (needs kpconv[sleap]). Every format writes every keypoint's "
                   "x, y and confidence.")
@click.option("--min-confidence", type=_FloatRange(0, 1), default=0.5, show_default=True,
              help="--draw leaves out keypoints below this confidence (no output format drops or zeroes any).")
@click.option("--draw", "draw_target", type=click.Path(), metavar="DIR|VIDEO",
              help="Draw the keypoints and skeleton: into DIR (each input at its path relative to the inputs' "
                   "common folder), or for one video input into a video file (out.mp4).")
@click.option("--draw-names", is_flag=True, help="Write the keypoint names beside the drawn points.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Videos: predict every N-th frame.")
@click.option("--start", callback=_parsed_by("video", "parse_frame_bound"), metavar="FRAME|SECONDSs",
              help="Videos: first frame (an index, e.g. 300, or a time, e.g. 10s).")
@click.option("--end", callback=_parsed_by("video", "parse_frame_bound"), metavar="FRAME|SECONDSs",
              help="Videos: stop before this frame (index or time).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write every file that could not be predicted, one JSON object per line.")
@click.option("--track", is_flag=True,
              help="Videos: link the instances from frame to frame and write each one's track id (every format).")
@click.option("--track-distance", type=_FloatRange(min=0, min_open=True), metavar="PX",
              help="--track: the farthest an instance may move between two frames and keep its track "
                   "(default: a tenth of the frame's longer side).")
@click.option("--track-memory", type=click.IntRange(min=0), default=5, show_default=True,
              help="--track: frames an instance may vanish for and keep its track.")
@click.option("--max-tracks", type=click.IntRange(min=1), metavar="N",
              help="--track: at most N tracks per video (the number of animals, when known).")
@_flip_test
@click.option("--max-instances", type=click.IntRange(min=1), metavar="N",
              help="Multi-instance runs: at most N instances per image or frame (default: the most seen in "
                   "training).")
@click.option("--min-score", type=_FloatRange(0, 1), default=0.0, show_default=True,
              help="Multi-instance runs: leave out instances scored below this (score: the mean keypoint "
                   "confidence, docs/multi-instance.md).")
@click.option("--runtime", type=click.Choice(["tf", "onnx"]), default="tf", show_default=True,
              help="What runs the model(s): tf (a TensorFlow graph) or onnx (onnxruntime: faster on CPUs, the "
                   "same keypoints within float32 round-off; needs kpconv[onnx]). onnx runs RUN_DIR/model.onnx "
                   "without TensorFlow when it was made from the run's model.keras for this input size and flip "
                   "setting (kpconv export --format onnx); else it converts model.keras with tf2onnx at start-up "
                   "and, if RUN_DIR holds no model.onnx or a stale one, writes it there (atomically; a read-only "
                   "RUN_DIR is left as it is).")
def predict(ctx, run_dir, inputs, bbox, boxes_path, output, fmt, min_confidence, draw_target, draw_names, every,
            start, end, batch_size, report_path, track, track_distance, track_memory, max_tracks, flip_test,
            max_instances, min_score, runtime):
    """Predict keypoints (original image pixels, with a confidence) for INPUT... : images, videos
    (every frame, or --every/--start/--end) and folders of them, with the crop and resize the run's
    shards used. A file that cannot be read is reported and skipped; the exit code is then 1."""
    from .model.predict import FILE_FORMATS, common_root, expand_inputs, output_format, require_format
    from .model.video import FrameSelection, is_video

    paths = expand_inputs(inputs)
    if not paths:
        raise click.UsageError("no image or video found in the given folder(s)")
    if bbox is not None and boxes_path:
        raise click.BadParameter("give --bbox or --boxes, not both", param_hint="--boxes")
    videos = [p for p in paths if is_video(p)]
    fmt = output_format(output, fmt)
    if fmt in ("dlc", "dlc-h5") and videos and len(paths) > 1:
        raise click.BadParameter("DeepLabCut's layout holds one video per file: give one video, or images",
                                 param_hint=f"--format {fmt}")
    if fmt in FILE_FORMATS and output == "-":
        raise click.BadParameter(f"--format {fmt} is written to a file, not to stdout: give -o FILE",
                                 param_hint="-o")
    require_format(fmt)
    if draw_target:
        if is_video(draw_target) and (len(paths) != 1 or not videos):
            raise click.BadParameter("a video file as --draw needs exactly one video input; give a folder "
                                     "to draw several inputs", param_hint="--draw")
        if not is_video(draw_target) and Path(draw_target).is_file():
            raise click.BadParameter(f"'{draw_target}' is a file; expected a folder (or a video name "
                                     "for one video input)", param_hint="--draw")
    if not track and (track_distance is not None or max_tracks is not None):
        raise click.BadParameter("--track-distance and --max-tracks are options of --track", param_hint="--track")
    if start is not None and end is not None and type(start) is type(end) and end <= start:
        raise click.BadParameter(f"--end {end} is not after --start {start}", param_hint="--end")
    if runtime == "onnx":
        from .model.onnxrt import require_onnx

        require_onnx("--runtime onnx")
    _quiet_tf(ctx)
    from .model.multi import MultiPredictor, run_is_multi
    from .model.predict import Boxes, Predictor, TrackOptions, run_predict
    from .model.run import import_keras_without_pandas

    multi = run_is_multi(run_dir)
    if runtime == "tf" or multi:   # (--runtime onnx: Keras only if the run's model.onnx does not serve)
        import_keras_without_pandas()    # (start-up: Keras's optional pandas import is 0.3 s; docs/benchmarks.md)
    boxes = Boxes.read(boxes_path) if boxes_path else None
    predictor = MultiPredictor(run_dir, max_instances=max_instances, min_score=min_score, flip_test=flip_test,
                               runtime=runtime) if multi else Predictor(run_dir, flip_test=flip_test, runtime=runtime)
    if boxes is not None and not multi and not predictor.crops_to_box:
        raise click.BadParameter("this run was trained on whole images (its shards have --crop none): boxes "
                                 "would not change its input", param_hint="--boxes")
    result = run_predict(predictor, paths, output=output, fmt=fmt, bbox=bbox, boxes=boxes,
                         min_confidence=min_confidence, draw=draw_target, draw_names=draw_names,
                         frames=FrameSelection(every, start, end), batch_size=batch_size,
                         report_path=report_path, root=common_root(paths),
                         on_failure=lambda f: click.echo(f"kpconv: error: {f}", err=True),
                         track=TrackOptions(track_distance, track_memory, max_tracks) if track else None)
    info(ctx, f"predict: {result.predicted} instance(s) in {result.images} image(s) and {result.frames} "
              f"video frame(s)" + (f" -> {output}" if output != "-" else "")
              + (f"; drawn in {draw_target}" if result.drawn else ""))
    if result.failures:
        from .errors import InputsFailed

        raise InputsFailed(result.failures, f"predict: {len(result.failures)} file(s) could not be read "
                                            f"(skipped; the others were written)"
                                            + (f"; see {report_path}" if report_path else ""))


@command()
@_run_dir
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx"]),
              default="savedmodel", show_default=True,
              help="tflite-fp16: float16 weights; tflite-int8: int8, calibrated on images of the run's shards; "
                   "onnx: through tf2onnx, for onnxruntime (needs kpconv[onnx]).")
@click.option("-o", "--output", metavar="PATH|-",
              help="Where to write (default: RUN_DIR/saved_model, RUN_DIR/model.tflite, model-fp16.tflite, "
                   "model-int8.tflite, model.onnx); '-' writes a TFLite or ONNX model to stdout.")
@click.option("--shards", "shard_dir", type=click.Path(exists=True, file_okay=False), metavar="SHARD_DIR",
              help="Shards for the check and the int8 calibration (default: the ones the run was trained on).")
@click.option("--check", "check_images", type=click.IntRange(min=0), default=8, show_default=True,
              help="Shard images on which the export is compared with model.keras (0: no check).")
def export(ctx, run_dir, fmt, output, shard_dir, check_images):
    """Export a trained run's model.keras as a SavedModel, a TFLite model (float32, float16 or int8) or ONNX,
    in float32 even when trained with --mixed-precision, and print the largest difference from
    model.keras in pixels of the stored image."""
    if output == "-" and fmt == "savedmodel":
        raise click.BadParameter("a SavedModel is a directory: it cannot go to stdout", param_hint="-o")
    _quiet_tf(ctx)
    from .model.export import export_run

    result = export_run(run_dir, fmt, output=output, shard_dir=shard_dir, check_images=check_images)
    info(ctx, f"export: {fmt}" + (f" -> {result.path}" if output != "-" else " -> stdout")
              + (f" ({result.bytes:,} bytes)" if result.bytes else ""))
    if result.max_diff_px is not None:
        info(ctx, f"  largest difference from model.keras on {result.checked} shard image(s): "
                  f"{result.max_diff_px:.3g} px (median {result.median_diff_px:.3g}, mean {result.mean_diff_px:.3g}; "
                  f"stored {result.image_size[0]}x{result.image_size[1]} image)")


def main(argv=None):
    """The ``kpconv`` program (console script): the command, then the process ends."""
    try:
        cli.main(args=argv, prog_name="kpconv")
    finally:
        # Python's exit would walk the hundreds of thousands of objects TensorFlow and Keras made in its
        # last garbage collections: 1.0-1.2 s after any TensorFlow command, against 0.1 s with them frozen
        # (left to the OS; atexit handlers still run, and every output is closed by then). Measured in
        # docs/benchmarks.md, "Start-up". Only here, where the process ends (not in cli, which tests call).
        import gc

        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
