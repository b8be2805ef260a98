"""The ``kpconv`` command line. Each command checks its options, calls one library function and
prints a short summary on stderr. Library errors (``KpconvError``) become a one-line message and
exit code 1; misused options exit 2 (Click). TensorFlow is imported only inside the commands that
need it, so ``kpconv --help`` and ``kpconv ingest`` start fast.
"""
from __future__ import annotations

import sys

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


def info(ctx: click.Context, message: str) -> None:
    """A summary line on stderr, unless --quiet (stdout is kept for data, e.g. a manifest)."""
    if not ctx.find_root().obj.get("quiet"):
        click.echo(message, err=True)


def debug(ctx: click.Context, message: str) -> None:
    if ctx.find_root().obj.get("verbose"):
        click.echo(message, err=True)


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
def _names(ctx, param, value):
    if value is None:
        return None
    from .keypoints import parse_names

    try:
        return parse_names(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _pairs(ctx, param, value):
    if value is None:
        return None
    from .keypoints import parse_pairs

    try:
        return parse_pairs(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _format_choices():
    from .formats import KNOWN

    return ["auto", *KNOWN]


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-f", "--format", "fmt", type=click.Choice(_format_choices()), default="auto", show_default=True,
              help="Annotation format; 'auto' detects it from the content.")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Folder the image paths are relative to. Default: the source's own folder "
                   "(DeepLabCut: the project folder).")
@click.option("-o", "--output", default="-", show_default=True, metavar="FILE|-",
              help="Manifest to write (JSON Lines); '-' is stdout.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write every problem found, one JSON object per line.")
@click.option("--strict", is_flag=True, help="Exit 1 on any problem, writing nothing.")
@click.option("--category", help="COCO: the category (name or id) to read when several have keypoints.")
@click.option("--keypoints", callback=_names, metavar="A,B,C",
              help="Keypoint names and their order (default: from the annotations).")
@click.option("--flip-pairs", callback=_pairs, metavar="L:R,...",
              help="Left/right keypoint pairs for horizontal flips (default: from the source or the names).")
@click.option("--allow-outside-root", is_flag=True,
              help="Accept image paths outside the images root ('../', absolute paths).")
@click.option("--workers", type=click.IntRange(min=0), default=0,
              help="Threads reading image headers (0: automatic).")
@click.pass_context
def ingest(ctx, sources, fmt, images, output, report_path, strict, category, keypoints, flip_pairs,
           allow_outside_root, workers):
    """Read keypoint annotations and write one canonical manifest (JSON Lines).

    SOURCES are annotation files or a dataset folder (Labelme folder, YOLO dataset, DeepLabCut
    project). Formats: COCO keypoints JSON, CSV tables (wide or long), DeepLabCut CollectedData CSV,
    kpconv JSON / JSON Lines, Labelme JSON, YOLO pose.

    Bad records are skipped and counted (summary on stderr, full list in --report); the exit code
    is 0 when at least one record was written. The output is written atomically.
    """
    from .formats.base import IngestOptions
    from .ingest import ingest as run_ingest

    options = IngestOptions(category=category, keypoints=keypoints, flip_pairs=flip_pairs,
                            allow_outside_root=allow_outside_root, workers=workers)
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
def _parsed(parser_name):
    def callback(ctx, param, value):
        if value is None:
            return None
        from . import shard as shard_mod

        try:
            return getattr(shard_mod, parser_name)(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return callback


@cli.command()
@click.argument("manifest", metavar="MANIFEST|-")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), metavar="OUT_DIR",
              help="Directory for the shards and dataset_info.json.")
@click.option("--image-size", default="224", show_default=True, callback=_parsed("parse_image_size"),
              metavar="224|WxH|none", help="Stored image size; 'none' keeps the (cropped) original size.")
@click.option("--resize", type=click.Choice(["stretch", "pad"]), default="stretch", show_default=True,
              help="stretch: scale to the size exactly; pad: keep the aspect ratio and letterbox.")
@click.option("--crop", type=click.Choice(["none", "bbox"]), default="none", show_default=True,
              help="bbox: cut each instance's box (enlarged by --crop-pad) out of the image.")
@click.option("--crop-pad", type=click.FloatRange(min=0, max=10), default=0.2, show_default=True,
              help="Growth of the box for --crop bbox, as a fraction of its width/height (half on each side).")
@click.option("--split", callback=_parsed("parse_split"), metavar="NAME=FRAC,...",
              help="Assign splits by a hash of each record's group (default: the source's split if any, "
                   "else train=0.8,val=0.1,test=0.1).")
@click.option("--shard-size", callback=_parsed("parse_bytes"), metavar="SIZE",
              help="Aimed bytes per shard, e.g. 64MB (default), 500KB, 1GiB.")
@click.option("--num-shards", type=click.IntRange(min=1), help="Shards per split (instead of --shard-size).")
@click.option("--workers", type=click.IntRange(min=0), default=0,
              help="Writer processes (0: number of CPUs). Does not change the output.")
@click.option("--seed", type=int, default=0, show_default=True, help="Salt of the split and order hashes.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="JPEG quality of re-encoded images.")
@click.option("--compression", type=click.Choice(["none", "gzip"]), default="none", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the shards of an existing OUT_DIR.")
@click.option("--resume", is_flag=True, help="Keep complete, correct shards of an interrupted run; write the rest.")
@click.pass_context
def shard(ctx, manifest, out_dir, image_size, resize, crop, crop_pad, split, shard_size, num_shards, workers,
          seed, quality, compression, overwrite, resume):
    """Convert a manifest (a file, or '-' for stdin) into TFRecord shards.

    Writes OUT_DIR/<split>.tfrecord-NNNNN-of-NNNNN, skipped.jsonl (records whose image could not be
    converted, with the reason) and, last, dataset_info.json. The shards are byte-identical for any
    --workers and any run. Exit code 0 when at least one record was written.
    """
    from .images import ImageOptions
    from .shard import DEFAULT_SHARD_SIZE, ShardOptions, shard as run_shard

    if shard_size is not None and num_shards is not None:
        raise click.BadParameter("give --shard-size or --num-shards, not both", param_hint="--num-shards")
    if overwrite and resume:
        raise click.BadParameter("give --overwrite or --resume, not both", param_hint="--resume")
    options = ShardOptions(image=ImageOptions(size=image_size, resize=resize, crop=crop, crop_pad=crop_pad,
                                              quality=quality),
                           split=split, shard_size=shard_size or DEFAULT_SHARD_SIZE, num_shards=num_shards,
                           workers=workers, seed=seed, compression=compression, overwrite=overwrite, resume=resume)
    result = run_shard(manifest, out_dir, options)
    parts = ", ".join(f"{name} {s['records']} in {len(s['shards'])} shard(s)" for name, s in result.info["splits"].items())
    info(ctx, f"shard: wrote {result.written} record(s) to {out_dir} ({parts}); skipped {result.skipped}"
              + (f" (see {out_dir}/skipped.jsonl)" if result.skipped else ""))
    if resume:
        info(ctx, f"resume: kept {result.kept_shards} complete shard(s), wrote {result.written_shards}")


@cli.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False), metavar="OUT_DIR")
@click.option("--verify", is_flag=True, help="Read every record: CRCs, sha256, spec, every image decodes.")
@click.option("--grid", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Draw a contact sheet of records with keypoints, names and skeleton (left red, right blue).")
@click.option("--n", "n", type=click.IntRange(min=1, max=1024), default=16, show_default=True,
              help="Records in the contact sheet.")
@click.pass_context
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


def main(argv=None):
    cli.main(args=argv, prog_name="kpconv")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
