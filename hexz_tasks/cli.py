"""The ``hexz`` command line. Each command is a thin call into the module that owns it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from hexz_tasks.errors import ModelError
from hexz_tasks.settings import Settings, SettingsError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hexz", description=__doc__)
    p.add_argument(
        "--quick-start",
        action="store_true",
        help="add `hexz run`'s quick-start settings where no HEXZ_* variable is set (e.g. "
        "`hexz --quick-start arena 10 54` searches as that pipeline's evaluation did)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "run",
        help="run the whole training pipeline on this machine (Redis, workers, beat, "
        "Flower, servers) with honcho and the Procfile",
    )
    sub.add_parser("redis", help="run the project-managed redis-server in the foreground")
    sub.add_parser("flower", help="run Flower on 127.0.0.1 with a login (generated if unset)")
    sub.add_parser("status", help="print where the pipeline stands (and disk use)")
    sub.add_parser("gc", help="delete old checkpoints, archives and example chunks now")

    play = sub.add_parser("play", help="play one game with uniformly random moves and print it")
    play.add_argument("--seed", type=int, default=None)

    sp = sub.add_parser("selfplay", help="play self-play games and write an archive")
    sp.add_argument("--games", type=int, required=True)
    sp.add_argument("--model", type=Path, required=True, help="TorchScript model file")
    sp.add_argument("--out", type=Path, required=True, help="AddTrainingExamplesRequest .gz")
    sp.add_argument("--seed", type=int, default=None)

    pr = sub.add_parser("print-request", help="summarise an AddTrainingExamplesRequest archive")
    pr.add_argument("file", type=Path)

    imp = sub.add_parser("import", help="import *.gz AddTrainingExamplesRequest archives")
    imp.add_argument("files", type=Path, nargs="+")
    exp = sub.add_parser("export", help="write the stored examples as *.gz archives")
    exp.add_argument("--out", type=Path, required=True, help="output directory")
    exp.add_argument("--encoding", choices=["numpy", "pytorch"], default="numpy")
    exp.add_argument("--per-file", type=int, default=10_000, help="examples per archive")

    serve = sub.add_parser("serve", help="run the HTTP (CPU player, status) and gRPC servers")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="HTTP port, 0 = off")
    serve.add_argument("--grpc-port", type=int, default=50051, help="gRPC port, 0 = off")

    arena = sub.add_parser("arena", help="play player A against player B")
    who = "checkpoint number, TorchScript file, 'mcts[:N]', 'uct:N', 'uct@MS' or 'random'"
    arena.add_argument("a", help=who)
    arena.add_argument("b", help=who)
    arena.add_argument("--games", type=int, default=20, help="games (pairs of seats x 2)")
    arena.add_argument(
        "--runs", type=int, default=100, help="runs per move of networks (and of bare 'mcts')"
    )
    arena.add_argument("--seed", type=int, default=0)
    sub.add_parser("ratings", help="print the rating curve over checkpoints")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_for(args.quick_start, os.environ)
    except SettingsError as e:
        print(f"hexz: {e}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, settings) or 0
    except (ValueError, ModelError, FileNotFoundError, ConnectionError) as e:
        print(f"hexz {args.command}: {e}", file=sys.stderr)
        return 1


def settings_for(quick_start: bool, environ: Mapping[str, str]) -> Settings:
    """The settings of `environ`, with the quick start's where it sets none if asked."""
    if quick_start:
        from hexz_tasks.launcher import pipeline_env

        environ = pipeline_env(environ)
    return Settings.from_env(environ)


def _dispatch(args: argparse.Namespace, settings: Settings) -> int | None:
    # Imports are local: each command pulls in only what it needs.
    match args.command:
        case "run":
            from hexz_tasks.launcher import run_pipeline

            return run_pipeline(settings)
        case "redis":
            from hexz_tasks.redis_server import run_foreground

            return run_foreground(settings)
        case "flower":
            from hexz_tasks.launcher import run_flower

            return run_flower(settings)
        case "gc":
            from hexz_tasks.retention import run_gc

            return run_gc(settings)
        case "status":
            from hexz_tasks.status import print_status

            return print_status(settings)
        case "play":
            from hexz_tasks.engine import print_random_game

            return print_random_game(args.seed)
        case "selfplay":
            from hexz_tasks.selfplay import selfplay_to_archive

            return selfplay_to_archive(args.model, args.games, args.out, settings, seed=args.seed)
        case "print-request":
            from hexz_tasks.archive import print_request

            return print_request(args.file)
        case "import":
            from hexz_tasks.archive import import_archives

            return import_archives(args.files, settings)
        case "export":
            from hexz_tasks.archive import export_archives

            return export_archives(
                args.out, settings, encoding=args.encoding, per_file=args.per_file
            )
        case "serve":
            from hexz_tasks.server import serve

            return serve(settings, host=args.host, port=args.port, grpc_port=args.grpc_port)
        case "arena":
            from hexz_tasks.arena import run_arena_cli

            return run_arena_cli(args.a, args.b, args.games, args.runs, args.seed, settings)
        case "ratings":
            from hexz_tasks.ratings import print_ratings

            return print_ratings(settings)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
