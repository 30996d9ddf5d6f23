"""``dode artifacts list|show|get|verify|gc|reindex``: browse, download, check, clean and index the artifact registry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dode.common import progress
from dode.integrations.diffusers.export import export_lambdas
from dode.store.export import fetch_parts, write_npz, write_pngs
from dode.store.fetch import clean_downloads, has_parts
from dode.store.location import registry_location
from dode.store.manifest import KINDS, printable
from dode.store.registry import Registry

UNVERIFIED = ("created", "provenance")  # manifest fields the id does not hash (dode.store.manifest.artifact_id)
FORMATS = {"png": write_pngs, "npz": write_npz, "files": fetch_parts}  # how `get` writes an artifact with parts


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name, help="list, show, download (get), verify, clean (gc) and index (reindex) registry artifacts",
        description="Artifacts are immutable and addressed by the sha256 of their content; any unique id "
        "prefix works. The registry is --registry URI, else $DODE_REGISTRY, else ./dode-registry "
        "(S3: s3://bucket/prefix, with AWS_ENDPOINT_URL or FSSPEC_S3_ENDPOINT_URL for other servers).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--registry", default=None, metavar="URI", help="registry path or fsspec URL")

    ls = actions.add_parser("list", parents=[registry], help="one artifact per line: id, kind, key, created and, "
                            "for lambdas, objective, options and first step")
    ls.add_argument("--kind", choices=KINDS, default=None, help="only artifacts of this kind")
    ls.add_argument("--json", action="store_true", help="a JSON array of the manifests instead of lines")
    ls.set_defaults(func=run_list)

    show = actions.add_parser("show", parents=[registry], help="print the manifest and the lineage down to the model",
                              description="Prints the manifest's checked fields (the id is their sha256), then its "
                              "provenance and creation time, which the id does not cover: marked unverified.")
    show.add_argument("id", help="artifact id or unique prefix")
    show.set_defaults(func=run_show)

    get = actions.add_parser(
        "get", parents=[registry], help="download an artifact, verifying each sha256; a samples job as its images",
        description="Writes the artifact's files into DIR. An artifact with parts (a samples job or shard: an index "
        "over chunk artifacts) is written as its content, every part read and verified: --format png (default) "
        "writes DIR/<seed>.png, npz writes DIR/samples.npz (images uint8 (N, C, H, W) and seeds), files writes "
        "the index and each part's files under DIR/parts/<part id>/.")
    get.add_argument("id", help="artifact id or unique prefix")
    get.add_argument("--out", required=True, metavar="DIR", help="directory to write the files into (only inside it)")
    get.add_argument("--force", action="store_true", help="overwrite files in DIR that hold other content")
    get.add_argument("--format", choices=[*FORMATS, "diffusers"], default=None,
                     help="how to write an artifact with parts (default png); other artifacts: files only; "
                     "diffusers: a lambdas artifact's schedule as stock diffusers schedulers take it (sigmas=/timesteps=)")
    get.add_argument("--quiet", action="store_true", help="no progress bar")
    get.set_defaults(func=run_get)

    verify = actions.add_parser("verify", parents=[registry],
                                help="check manifests, ids, names, sizes and sha256 of every file; stale partial files")
    verify.add_argument("id", nargs="?", default=None, help="one artifact id or prefix (default: all)")
    verify.set_defaults(func=run_verify)

    gc = actions.add_parser("gc", parents=[registry], help="remove partial files no live writer owns (staging/)")
    gc.add_argument("--out", action="append", default=[], metavar="DIR",
                    help="also remove what interrupted `get`s left in DIR (repeatable)")
    gc.set_defaults(func=run_gc)

    reindex = actions.add_parser("reindex", parents=[registry],
                                 help="give every artifact its key index entry (registries written before the index)",
                                 description="Lookups by kind and key read only the manifests the key index names "
                                 "(dode.store.key_index); a registry written by an older dode is listed whole "
                                 "until this writes the missing entries. Safe to rerun and to run while others publish.")
    reindex.set_defaults(func=run_reindex)


def open_registry(args: argparse.Namespace) -> Registry:
    """The registry named on the command line (or the default), which must exist and be readable."""
    reg = Registry(registry_location(args.registry))
    reg.check_readable()
    return reg


def run_list(args: argparse.Namespace) -> int:
    reg = open_registry(args)
    arts = reg.list(args.kind)
    if args.json:  # every manifest, as dode artifacts show prints one
        print(json.dumps([art.to_dict() for art in arts], indent=2, sort_keys=True))
    else:
        for art in arts:
            print(art.line())
    if not arts:
        print(f"no {args.kind or ''} artifacts in registry {reg.uri}".replace("  ", " "), file=sys.stderr)
    if reg.broken:
        print(f"{len(reg.broken)} artifact(s) with a broken manifest not listed; run `dode artifacts verify`",
              file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    reg = open_registry(args)
    art = reg.get(args.id)
    manifest = art.to_dict()
    unverified = {k: manifest.pop(k) for k in UNVERIFIED}
    print(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"unverified (not covered by the id; anyone with write access can edit them): {', '.join(UNVERIFIED)}")
    print(json.dumps(unverified, indent=2, sort_keys=True))
    print("lineage:")
    for item in reg.lineage(art):
        parents = " ".join(p[:12] for p in item.parents) or "-"
        print(f"  {item.line()}  <- {parents}")
    return 0


def run_get(args: argparse.Namespace) -> int:
    reg = open_registry(args)
    art = reg.get(args.id)
    if args.format == "diffusers":
        count, what = export_lambdas(reg, art, Path(args.out), args.force)
        print(f"{art.id}: {count} {what} written into {args.out}")
        return 0
    if not has_parts(art):
        if args.format not in (None, "files"):
            raise ValueError(f"--format {args.format} applies to artifacts with parts (samples jobs and shards); "
                             f"{art.short} is a {art.kind!r} artifact: drop --format")
        out = reg.fetch(art, args.out, force=args.force)
        print(f"{art.id}: {len(art.files)} file(s) verified into {out}")
        return 0
    with progress.bars(not args.quiet):
        count, what = FORMATS[args.format or "png"](reg, art, Path(args.out), args.force)
    print(f"{art.id}: {count} {what} verified into {args.out}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    reg = open_registry(args)
    problems = reg.verify(args.id)
    for problem in problems:
        print(printable(problem), file=sys.stderr)
    checked = 1 if args.id else len(reg.list()) + len(reg.broken)
    print(f"{checked} artifact(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def run_gc(args: argparse.Namespace) -> int:
    reg = open_registry(args)
    removed = reg.gc() + [entry for out in args.out for entry in clean_downloads(Path(out))]
    for entry in removed:
        print(printable(f"removed {entry.path} ({entry.size} bytes)"), file=sys.stderr)
    print(f"{len(removed)} stale partial file(s) removed, {sum(e.size for e in removed)} bytes")
    return 0


def run_reindex(args: argparse.Namespace) -> int:
    reg = open_registry(args)
    written = reg.reindex()
    print(f"{written} key index entr{'y' if written == 1 else 'ies'} written; {reg.uri} is indexed")
    return 0
