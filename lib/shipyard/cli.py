"""`shipyard`: the operator's command line for what needs a person.

    shipyard retrain list                       retraining requests of the serving app
    shipyard retrain approve ID [--by NAME]     the retrained version joins live traffic as a canary
    shipyard retrain reject ID --reason TEXT
    shipyard review export --queue CSV --into DIR --like PARQUET --target COL [--time-column C]
    shipyard ingress [--address DASHBOARD] [--app NAME]   the router replicas' own URLs
    shipyard mlflow-model NAME VERSION          make an older version an MLflow model (pyfunc)

The retrain commands call the app's routes (`--url`, default $SHIPYARD_URL or
http://127.0.0.1:8000) with the admin token from $SHIPYARD_ADMIN_TOKEN.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shipyard.errors import ShipyardError


def _call(url: str, method: str, token_env: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    token = os.environ.get(token_env)
    if method != "GET":
        if not token:
            raise SystemExit(f"error: set {token_env} to the serving app's admin token")
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        raise SystemExit(f"error: HTTP {err.code} from {url}: {detail}") from None
    except urllib.error.URLError as err:
        raise SystemExit(f"error: cannot reach the serving app at {url}: {err.reason}") from None


def _retrain(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    if args.action == "list":
        out = _call(f"{base}/retrain", "GET", args.token_env)
        rows = out.get("requests", [])
        print(f"model {out.get('model')}: on_drift {out.get('on_drift')}, {len(rows)} request(s)")
        for r in rows:
            kinds = ", ".join(
                f"{k}: {v}" for k, v in (r.get("trigger") or {}).get("kinds", {}).items()
            )
            print(f"  {r['id']}  {r['status']:<18} version {r.get('version') or '-':<4} {kinds}")
        return 0
    body = {"by": args.by}
    if args.action == "reject":
        body["reason"] = args.reason
    out = _call(f"{base}/retrain/{args.id}/{args.action}", "POST", args.token_env, body)
    print(json.dumps(out, indent=1, default=str))
    return 0


def _review(args: argparse.Namespace) -> int:
    from shipyard.monitoring.review import export

    try:
        out = export(Path(args.queue), Path(args.into), Path(args.like), args.target,
                     args.time_column)  # fmt: skip
    except ShipyardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


def _ingress(args: argparse.Namespace) -> int:
    """One URL per router replica (Serve's direct ingress: no proxy hop), from Serve's REST API."""
    from shipyard.compute.ingress import direct_urls

    try:
        urls = direct_urls(args.address, args.app)
    except OSError as err:
        print(f"error: cannot read Serve's applications at {args.address}: {err}", file=sys.stderr)
        return 2
    if not urls:
        print(f"error: no direct ingress for app {args.app!r} at {args.address} (not deployed, "
              "or Serve runs without RAY_SERVE_THROUGHPUT_OPTIMIZED=1)", file=sys.stderr)  # fmt: skip
        return 2
    print("\n".join(urls))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="shipyard", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rt = sub.add_parser("retrain", help="retraining requests: list, approve, reject")
    rt.add_argument("action", choices=["list", "approve", "reject"])
    rt.add_argument("id", nargs="?", help="request id (approve, reject)")
    rt.add_argument("--url", default=os.environ.get("SHIPYARD_URL", "http://127.0.0.1:8000"))
    rt.add_argument("--by", default=getpass.getuser(), help="who decides (recorded)")
    rt.add_argument("--reason", help="why (required to reject)")
    rt.add_argument("--token-env", default="SHIPYARD_ADMIN_TOKEN")
    rv = sub.add_parser("review", help="the review queue")
    rv.add_argument("action", choices=["export"])
    rv.add_argument("--queue", required=True, help="review/v<N>.csv under the app's state dir")
    rv.add_argument("--into", required=True, help="directory the next training run reads")
    rv.add_argument("--like", required=True, help="a parquet file of the training data")
    rv.add_argument("--target", required=True, help="the training config's data.target")
    rv.add_argument("--time-column", help="the training config's data.time_column")
    ig = sub.add_parser("ingress", help="the serving app's direct URLs (one per router replica)")
    ig.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS",
                                                        "http://127.0.0.1:8265"),
                    help="the Ray dashboard (default $RAY_DASHBOARD_ADDRESS or :8265)")  # fmt: skip
    ig.add_argument("--app", default="shipyard", help="the Serve application's name")
    mm = sub.add_parser("mlflow-model", help="add the MLflow model files to an older version")
    mm.add_argument("name")
    mm.add_argument("version", type=int)
    mm.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or "
                    "the local store under $SHIPYARD_HOME")  # fmt: skip
    return ap


def _mlflow_model(args: argparse.Namespace) -> int:
    from shipyard.registry import Registry, add_mlflow_model

    try:
        added = add_mlflow_model(Registry(args.tracking_uri), args.name, args.version)
    except (ShipyardError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    uri = f"models:/{args.name}/{args.version}"
    if not added:
        print(f"{args.name} v{args.version} already is an MLflow model ({uri}); nothing changed")
    else:
        print(f"{args.name} v{args.version}: added {', '.join(added)} and updated its manifest; "
              f"load it with mlflow.pyfunc.load_model({uri!r})")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "retrain":
        if args.action != "list" and not args.id:
            print(f"error: retrain {args.action} needs a request id", file=sys.stderr)
            return 2
        if args.action == "reject" and not args.reason:
            print("error: retrain reject needs --reason", file=sys.stderr)
            return 2
        return _retrain(args)
    if args.command == "ingress":
        return _ingress(args)
    if args.command == "mlflow-model":
        return _mlflow_model(args)
    return _review(args)


if __name__ == "__main__":
    sys.exit(main())
