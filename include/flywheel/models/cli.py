"""``flywheel models``: list models, versions and the champion; train; roll back."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from flywheel.cli import register
from flywheel.settings import Settings


def _add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="models with their champion and latest version")
    show = sub.add_parser("show", help="every version of a model: metrics, gates, verdict")
    show.add_argument("model")
    train = sub.add_parser("train", help="train, validate and promote-or-reject, as the DAG does")
    train.add_argument("model")
    train.add_argument("--as-of", help="end of the window (ISO time; default now)")
    train.add_argument("--window", help="override the spec's window, e.g. 3d")
    rollback = sub.add_parser("rollback", help="make an earlier version the champion again")
    rollback.add_argument("model")
    rollback.add_argument("version", type=int)
    rollback.add_argument("--reason", default="manual rollback (CLI)")


def _fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from flywheel.models.store import ModelStore
    from flywheel.specs import find_spec, load_specs
    from flywheel.training import pipeline

    models = ModelStore(settings.open_store())
    if args.action == "list":
        names = sorted(set(models.models()) | {s.name for s in load_specs(settings.specs_dir)})
        for name in names:
            champion = models.champion(name)
            versions = models.versions(name)
            auc = models.get_version(name, champion.version).metrics.get("auc") if champion else None
            print(f"{name:<20} champion {(f'v{champion.version}') if champion else '-':<6} "
                  f"AUC {auc if auc is None else round(auc, 4)!s:<8} versions {len(versions)}")
        return 0
    if args.action == "show":
        champion = models.champion(args.model)
        for v in models.versions(args.model):
            mark = "*" if champion and champion.version == v.version else " "
            failed = [g["name"] for g in (v.validation or {}).get("gates", []) if not g["passed"]]
            auc = v.metrics.get("auc")
            print(f"{mark} v{v.version:<4} {v.status:<9} AUC {auc if auc is None else round(auc, 4)!s:<8} "
                  f"rows {v.metadata['row_counts'].get('labelled_events', '?'):<8} trained {_fmt_time(v.metadata.get('trained_at'))}"
                  + (f"  failed: {', '.join(failed)}" if failed else ""))
        for h in models.history(args.model):
            was = f"was v{h['previous']}" if h["previous"] else "first champion"
            print(f"  {_fmt_time(h['promoted_at'])} {h['action']:<8} v{h['version']} ({was}) {h['reason']}")
        return 0
    if args.action == "rollback":
        print(json.dumps(pipeline.rollback(settings, args.model, args.version, reason=args.reason)))
        return 0
    spec = find_spec(settings.specs_dir, args.model)
    as_of = datetime.fromisoformat(args.as_of.replace("Z", "+00:00")) if args.as_of else datetime.now(UTC)
    trained = pipeline.train_challenger(settings, spec, as_of=as_of, run_id="cli", window=args.window)
    print(json.dumps(trained, default=str))
    if trained["status"] != "trained":
        return 0
    print(json.dumps(pipeline.validate_challenger(settings, spec, trained["version"]), default=str))
    print(json.dumps(pipeline.promote_or_reject(settings, spec, trained["version"], run_id="cli"), default=str))
    return 0


register("models", "list models and versions, train, roll back", _run, _add_args)
