"""The ``flywheel`` command: the same package code the DAGs run, usable without Airflow.

Errors a user can cause (configuration, specs, an unreachable broker or store) print one line and
exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from flywheel.errors import FlywheelError
from flywheel.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]
ArgAdder = Callable[[argparse.ArgumentParser], None]
_COMMANDS: dict[str, tuple[Command, ArgAdder, str]] = {}


def register(name: str, help: str, run: Command, add_args: ArgAdder = lambda p: None) -> None:
    """Add a sub-command; modules that own the logic register their own commands."""
    _COMMANDS[name] = (run, add_args, help)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


# --- check -----------------------------------------------------------------------------------------


def _run_check(args: argparse.Namespace, settings: Settings) -> int:
    from flywheel.health import check_all

    results = check_all(settings, create_topics=args.create_topics)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{'ok ' if r.ok else 'FAIL'} {r.name:<{width}}  {r.detail}")
    return 0 if all(r.ok for r in results) else 2


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--create-topics", action="store_true", help="create the topics the specs name if missing")


register("check", "validate settings and specs, reach the broker and the store, check the topics",
         _run_check, _check_args)


# --- specs -----------------------------------------------------------------------------------------


def _run_specs(args: argparse.Namespace, settings: Settings) -> int:
    from flywheel.specs import load_spec, load_specs

    specs = [load_spec(p) for p in args.paths] if args.paths else load_specs(settings.specs_dir)
    for spec in specs:
        print(f"{spec.name}: {spec.source} (hash {spec.spec_hash[:12]}, {len(spec.features)} features, "
              f"topics {', '.join(spec.drained_topics)})")
    return 0


def _specs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", help="spec files to validate")


register("specs", "validate model specs (default: every spec in FLYWHEEL_SPECS_DIR)", _run_specs, _specs_args)


# --- entry point -----------------------------------------------------------------------------------


def _load_command_modules() -> None:
    """Commands living next to their logic register themselves on import."""
    import importlib

    for module in ("flywheel.drain.cli", "flywheel.models.cli", "flywheel.scoring.cli", "flywheel.demo.cli",
                   "flywheel.airflow_client"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_run, add_args, help_text) in sorted(_COMMANDS.items()):
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for chatty in ("httpx", "httpcore", "botocore", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
        return _COMMANDS[args.command][0](args, settings)
    except FlywheelError as exc:
        print(f"flywheel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run as the installed module, so sub-commands registered by other modules land in one table.
    from flywheel.cli import main as installed_main

    sys.exit(installed_main())
