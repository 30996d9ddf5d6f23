"""``dode sample`` (sharded, resumable sampling into the registry) and ``dode fid`` (FID as pytorch-fid, FD-*)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dode.cli.options import add_config_options, config_mapping
from dode.common import progress
from dode.metrics.features import EXTRACTORS, INCEPTION_DIMS


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    if name == "sample":
        _add_sample(sub)
    elif name == "fid":
        _add_fid(sub)
    else:
        raise ValueError(f"dode.cli.scoring provides 'sample' and 'fid', not {name!r}")


def _registry(uri: str | None):
    from dode.store.location import registry_location
    from dode.store.registry import Registry

    return Registry(registry_location(uri))


def _add_sample(sub: argparse._SubParsersAction) -> None:
    from dode.pipeline.runs import SampleRun

    p = sub.add_parser(
        "sample", help="sample a model (with D-ODE lambdas) into the registry, sharded and resumable",
        description="Sample seeds first_seed .. first_seed + n_samples - 1 in chunks of --sampling-batch-size; each "
        "chunk is a registry artifact, so a rerun resumes and --shard/--sampling-num-shards split the job over "
        "workers. The options are the sample stage's configuration (dode.pipeline.runs.SampleRun), as `dode run "
        "sample`'s. Prints the samples artifact id (the whole job's once every shard is done, else this shard's).",
    )
    add_config_options(p, SampleRun)
    p.add_argument("--shard", type=int, default=0, help="which shard this worker computes (0-based)")
    p.add_argument("--allow-other-model", action="store_true",
                   help="use --lambdas even if they were fitted on another model (refused by default)")
    p.add_argument("--png-dir", default=None,
                   help="also write the samples as <seed>.png here (a real folder outside the registry)")
    p.add_argument("--force", action="store_true", help="overwrite PNGs in --png-dir that hold other content")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--registry", default=None, metavar="URI", help="registry path or URL (default $DODE_REGISTRY)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from dode.common.config import build
    from dode.pipeline.generate import run_sampling
    from dode.pipeline.runs import SampleRun
    from dode.store.export import write_pngs
    from dode.store.fetch import output_dir

    config = build(SampleRun, config_mapping(args, SampleRun))
    registry = _registry(args.registry) if config.lambdas else None
    job = config.job(registry)
    if args.png_dir:  # before sampling, not after
        try:
            output_dir(Path(args.png_dir))
        except ValueError as err:
            raise ValueError(f"--png-dir: {err}") from None
    registry, num_shards = registry or _registry(args.registry), config.sampling.num_shards
    art = run_sampling(job, registry, shard=args.shard, num_shards=num_shards, device=args.device,
                       progress=not args.quiet, allow_other_model=args.allow_other_model)
    if "shard" in art.params:
        print(f"shard {args.shard} of {num_shards} done; the job's other shards are still missing", file=sys.stderr)
    if args.png_dir:
        with progress.bars(not args.quiet):
            count, _ = write_pngs(registry, art, Path(args.png_dir), args.force)
        print(f"wrote {count} PNGs to {args.png_dir}", file=sys.stderr)
    print(art.id)
    return 0


def _add_fid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fid", help="FID between two image sets, exactly as pytorch-fid (or FD on other features)",
        description="Each PATH is an image folder, a pytorch-fid .npz of statistics, or a registry artifact id "
        "('samples' or 'reference-stats'). Prints 'FID:  <value>' as `python -m pytorch_fid` does; with "
        "--features digits|pixels prints 'FD-<features>:  <value>'.",
    )
    p.add_argument("path", nargs="+", help="two sources to compare; with --save-stats: SRC OUT.npz")
    p.add_argument("--features", default="inception", choices=list(EXTRACTORS), help="feature extractor")
    p.add_argument("--dims", type=int, default=None, choices=INCEPTION_DIMS, help="Inception feature dims (2048)")
    p.add_argument("--batch-size", type=int, default=50, help="images per feature-extractor batch")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--inception-weights", default=None, metavar="P",
                   help="FID Inception weights file (default: pytorch-fid's cache under $TORCH_HOME)")
    p.add_argument("--save-stats", action="store_true", help="write the statistics of SRC to OUT.npz")
    p.add_argument("--register", default=None, metavar="KEY",
                   help="register the statistics of the (first) source as a 'reference-stats' artifact")
    p.add_argument("--registry", default=None, metavar="URI", help="registry path or URL (default $DODE_REGISTRY)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (feature extraction)")
    p.set_defaults(func=run_fid)


def run_fid(args: argparse.Namespace) -> int:
    from dode.metrics.features import Counted, get_extractor
    from dode.metrics.fid import frechet_distance, save_stats_npz
    from dode.metrics.sources import expected_features, publish_reference_stats, stats_of_source

    # Every argument is checked before any statistics are computed.
    _check_fid_args(args)
    dims = args.dims or 2048
    cache: dict[str, object] = {}

    def extractor():
        if "extractor" not in cache:
            weights = args.inception_weights if args.features == "inception" else None
            cache["extractor"] = Counted(get_extractor(args.features, dims=dims, device=args.device, weights=weights),
                                         bar)
        return cache["extractor"]

    def registry():
        if "registry" not in cache:
            cache["registry"] = _registry(args.registry)
        return cache["registry"]

    if args.register:
        registry().check_writable()
    expected = expected_features(args.features, dims)
    with progress.bars(not args.quiet), progress.bar(None, f"{args.features} features", "image") as bar:
        stats = [stats_of_source(p, extractor, registry=registry, batch_size=args.batch_size, expected=expected)
                 for p in (args.path[:1] if args.save_stats or args.register else args.path)]
    if args.save_stats:
        print(f"saved statistics of {args.path[0]} to {save_stats_npz(stats[0], args.path[1])}", file=sys.stderr)
    if args.register:
        print(publish_reference_stats(registry(), args.register, stats[0], args.path[0]).id)
    if not (args.save_stats or args.register):
        label = "FID" if args.features == "inception" else f"FD-{args.features}"
        print(f"{label}: ", frechet_distance(*stats))
    return 0


def _check_fid_args(args: argparse.Namespace) -> None:
    """One ValueError for any bad ``dode fid`` argument; the output .npz is checked before the work, not after."""
    from dode.common.devices import resolve_device
    from dode.metrics.fid import check_stats_path

    if args.dims is not None and args.features != "inception":
        raise ValueError(f"--dims applies to Inception features only; drop it for --features {args.features}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    wanted = 2 if args.save_stats or not args.register else 1
    if len(args.path) != wanted:
        usage = "SRC OUT.npz" if args.save_stats else ("SRC" if args.register else "PATH1 PATH2")
        raise ValueError(f"expected {usage}, got {len(args.path)} path(s)")
    resolve_device(args.device)
    if args.save_stats:
        check_stats_path(args.path[1])
