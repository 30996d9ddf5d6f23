"""``dode sample`` (sharded, resumable sampling into the registry) and ``dode fid`` (FID as pytorch-fid, FD-*)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dode.common import progress
from dode.core.gaussian import FIRST_STEPS
from dode.core.grids import FAMILIES
from dode.metrics.features import EXTRACTORS, INCEPTION_DIMS
from dode.pipeline.generate import SamplingConfig

SAMPLING = SamplingConfig()  # the defaults of a sampling job, as the flows' (dode.distillation.config)


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
    p = sub.add_parser(
        "sample", help="sample a model (with D-ODE lambdas) into the registry, sharded and resumable",
        description="Sample seeds first_seed .. first_seed + n_samples - 1 in chunks of --batch-size; each chunk "
        "is a registry artifact, so a rerun resumes and --shard/--num-shards split the job over workers. "
        "Prints the samples artifact id (the whole job's once every shard is done, else this shard's).",
    )
    p.add_argument("--model", required=True, help="registered model name or diffusers folder")
    p.add_argument("--solver", default=None, help="base solver (default euler; with --lambdas: theirs)")
    p.add_argument("--grid", default=None, choices=FAMILIES,
                   help="grid family (default karras; with --lambdas: the grid they were fitted on)")
    p.add_argument("--nfe", type=int, default=None,
                   help="network calls per sample (implied by --lambdas); with --first-step analytic the grid has "
                        "one step more than the calls")
    p.add_argument("--first-step", default=None, choices=FIRST_STEPS,
                   help="how the evaluation at sigma_max is made: by the network (default), by a Gaussian of the "
                        "model (analytic: closed form; flowmap: its exact flow to the next sigma); implied by --lambdas")
    p.add_argument("--gaussian", default=None, metavar="ID",
                   help="'gaussian' artifact for --first-step analytic/flowmap (make one with `dode gaussian`)")
    p.add_argument("--sigmas", default=None, metavar="S0,...,0",
                   help="an explicit grid instead of --grid/--nfe: comma-separated noise levels, strictly "
                   "decreasing, ending in 0 (e.g. 80,10,1,0.1,0)")
    p.add_argument("--lambdas", default=None, metavar="ID",
                   help="lambdas artifact id (or unique prefix); implies solver, NFE and grid (learned grids too)")
    p.add_argument("--allow-other-model", action="store_true",
                   help="use --lambdas even if they were fitted on another model (refused by default)")
    p.add_argument("--n-samples", type=int, default=SAMPLING.n_samples, help="samples in the job (default %(default)s)")
    p.add_argument("--first-seed", type=int, default=SAMPLING.first_seed,
                   help="seed of the first sample; sample k uses seed first_seed + k (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=SAMPLING.batch_size,
                   help="samples per batch and per stored chunk (default %(default)s)")
    p.add_argument("--shard", type=int, default=0, help="which shard this worker computes (0-based)")
    p.add_argument("--num-shards", type=int, default=SAMPLING.num_shards,
                   help="shards the job's chunks are split into (default %(default)s)")
    p.add_argument("--png-dir", default=None,
                   help="also write the samples as <seed>.png here (a real folder outside the registry)")
    p.add_argument("--force", action="store_true", help="overwrite PNGs in --png-dir that hold other content")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--registry", default=None, metavar="URI", help="registry path or URL (default $DODE_REGISTRY)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from dode.pipeline.generate import SamplingJob, run_sampling
    from dode.store.export import write_pngs
    from dode.store.fetch import output_dir

    registry = _registry(args.registry) if args.lambdas else None
    solver, grid = implied_sampler(registry, args) if args.lambdas else base_sampler(args)
    first = {} if args.lambdas else first_step_of(args)
    job = SamplingJob(args.model, solver, grid, args.lambdas, args.n_samples, args.first_seed, args.batch_size, **first)
    if args.png_dir:  # before sampling, not after
        try:
            output_dir(Path(args.png_dir))
        except ValueError as err:
            raise ValueError(f"--png-dir: {err}") from None
    registry = registry or _registry(args.registry)
    art = run_sampling(job, registry, shard=args.shard, num_shards=args.num_shards, device=args.device,
                       progress=not args.quiet,
                       allow_other_model=args.allow_other_model)
    if "shard" in art.params:
        print(f"shard {args.shard} of {args.num_shards} done; the job's other shards are still missing", file=sys.stderr)
    if args.png_dir:
        with progress.bars(not args.quiet):
            count, _ = write_pngs(registry, art, Path(args.png_dir), args.force)
        print(f"wrote {count} PNGs to {args.png_dir}", file=sys.stderr)
    print(art.id)
    return 0


def first_step_of(args: argparse.Namespace) -> dict:
    """The job's first step without lambdas: --first-step (default network) and --gaussian, given together."""
    kind = args.first_step or "network"
    if (kind == "network") != (args.gaussian is None):
        raise ValueError("--first-step analytic/flowmap needs --gaussian ID (make one with `dode gaussian`), and "
                         "--gaussian needs --first-step analytic or flowmap")
    return {"first_step": kind, "gaussian_id": args.gaussian}


def base_sampler(args: argparse.Namespace) -> tuple[str, dict]:
    """(solver, grid) without lambdas: --solver (default euler) and --grid (default karras) at --nfe (needed)."""
    from dode.core.grids import GridSpec

    solver = args.solver or "euler"
    if args.sigmas is not None:
        if args.nfe is not None or args.grid is not None:
            raise ValueError("--sigmas is the whole grid: drop --nfe and --grid")
        try:
            values = [float(v) for v in args.sigmas.split(",")]
        except ValueError:
            raise ValueError(f"--sigmas must be comma-separated numbers ending in 0, got {args.sigmas!r:.80}") from None
        return solver, GridSpec.explicit(values).to_dict()
    if args.nfe is None:
        raise ValueError("pass --nfe N (network evaluations per sample), --sigmas S0,...,0, or --lambdas ID")
    return solver, GridSpec.for_calls(args.grid or "karras", solver, args.nfe, args.first_step or "network").to_dict()


def implied_sampler(registry, args: argparse.Namespace) -> tuple[str, None]:
    """(solver, grid) of the lambdas: their solver, and no grid (the job samples on the grid they were fitted
    on, learned or not: ``dode.core.fitted``). --solver, --nfe and --grid may be given only when they agree with
    what the lambdas imply; --sigmas never (an explicit grid passed with lambdas is theirs or an error)."""
    from dode.core.grids import GridSpec
    from dode.core.sampling import network_calls
    from dode.store.lambdas import load_lambdas

    registry.check_readable()
    art = registry.get(args.lambdas)
    lam = load_lambdas(registry, art)
    grid = GridSpec(**art.params["grid"]) if "grid" in art.params else GridSpec.explicit(lam.sigmas)
    first = lam.first
    calls = network_calls(lam.solver, len(lam.sigmas) - 1, first)
    implied = {"--solver": (args.solver, lam.solver), "--nfe": (args.nfe, calls), "--grid": (args.grid, grid.family),
               "--first-step": (args.first_step, first.kind if first else "network")}
    clash = [f"{flag} {given} (they imply {mine})" for flag, (given, mine) in implied.items()
             if given is not None and given != mine] + (["--sigmas (they imply their grid)"] if args.sigmas else [])
    clash += ["--gaussian (they carry their own)"] if args.gaussian else []
    if clash:
        raise ValueError(f"lambdas {art.short} were fitted for solver {lam.solver}, NFE {calls} on a {grid.family} "
                         f"grid; drop {', '.join(clash)}: --lambdas implies them")
    return lam.solver, None


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
