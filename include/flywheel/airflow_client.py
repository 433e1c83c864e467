"""A small client for Airflow 3's REST API, as an external user would drive flywheel.

``make demo``, the end-to-end tests and the ``flywheel airflow`` command use it to wait for health,
list DAGs and import errors, and trigger runs with parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from flywheel.cli import register
from flywheel.errors import FlywheelError
from flywheel.settings import Settings, project_home

TERMINAL_STATES = {"success", "failed"}


class AirflowApiError(FlywheelError):
    """Airflow's API refused or did not answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def default_url() -> str:
    return os.environ.get("FLYWHEEL_AIRFLOW_URL") or f"http://127.0.0.1:{os.environ.get('AIRFLOW_PORT', '8080')}"


def admin_password(home: Path | None = None) -> str:
    """The password of ``admin`` written by scripts/airflow.sh (or FLYWHEEL_AIRFLOW_PASSWORD)."""
    if os.environ.get("FLYWHEEL_AIRFLOW_PASSWORD"):
        return os.environ["FLYWHEEL_AIRFLOW_PASSWORD"]
    path = (home or project_home()) / ".local" / "airflow" / "passwords.json"
    try:
        return json.loads(path.read_text())["admin"]
    except (OSError, ValueError, KeyError):
        raise FlywheelError(f"no admin password: {path} is missing (start Airflow with make airflow-up)") from None


@dataclass
class AirflowClient:
    url: str
    username: str = "admin"
    password: str | None = None
    timeout_s: float = 30.0
    _token: str | None = None

    #: Pauses before retrying a 5xx answer: SQLite-backed Airflow answers "database is locked" as a 500
    #: while its scheduler holds the write lock, e.g. right after a restart.
    retry_pauses_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)

    def _request(self, method: str, path: str, *, auth: bool = True, retry: bool = True, **kwargs: Any) -> Any:
        """One API call; server errors are retried (callers make non-GET calls safe to repeat)."""
        pauses = list(self.retry_pauses_s) if retry else []
        while True:
            headers = {"Authorization": f"Bearer {self.token()}"} if auth else {}
            try:
                response = httpx.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kwargs)
            except httpx.HTTPError as exc:
                raise AirflowApiError(f"Airflow at {self.url} did not answer: {exc}") from None
            if response.status_code >= 500 and pauses:
                time.sleep(pauses.pop(0))
                continue
            if response.status_code >= 400:
                raise AirflowApiError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}",
                                      status=response.status_code)
            return response.json() if response.content else None

    def token(self) -> str:
        if self._token is None:
            password = self.password if self.password is not None else admin_password()
            body = self._request("POST", "/auth/token", auth=False,
                                 json={"username": self.username, "password": password})
            self._token = body["access_token"]
        return self._token

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/v2/monitor/health", auth=False, retry=False)

    def wait_healthy(self, timeout_s: float = 240.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.health()
                if all(part.get("status") == "healthy" for part in last.values() if isinstance(part, dict)):
                    return last
            except AirflowApiError as exc:
                last = str(exc)
            time.sleep(2)
        raise AirflowApiError(f"Airflow at {self.url} not healthy after {timeout_s:.0f}s: {last}")

    def dags(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v2/dags", params={"limit": 1000})["dags"]

    def import_errors(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v2/importErrors")["import_errors"]

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        """Start a run. The run id is chosen here, so a retried request cannot start the run twice."""
        run_id = run_id or f"manual__flywheel_{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:6]}"
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}, "dag_run_id": run_id}
        try:
            return self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]
        except AirflowApiError as exc:
            if exc.status == 409 and self._run_exists(dag_id, run_id):  # an earlier attempt got through
                return run_id
            raise

    def _run_exists(self, dag_id: str, run_id: str) -> bool:
        try:
            self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return True
        except AirflowApiError:
            return False

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float = 600.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL_STATES:
                return state
            time.sleep(2)
        raise AirflowApiError(f"{dag_id} run {run_id} did not finish within {timeout_s:.0f}s")

    def runs(self, dag_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs of ``dag_id`` first, whoever started them (schedule, asset, user)."""
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns",
                             params={"order_by": "-id", "limit": limit})["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def wait_for_dags(self, dag_ids: list[str], timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Wait until the DAG processor has parsed the DAG files (or reported why not)."""
        deadline = time.monotonic() + timeout_s
        while True:
            errors = self.import_errors()
            if errors:
                details = "; ".join(f"{e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}" for e in errors)
                raise AirflowApiError(f"DAG import errors: {details}")
            dags = self.dags()
            if set(dag_ids) <= {d["dag_id"] for d in dags}:
                return dags
            if time.monotonic() > deadline:
                raise AirflowApiError(f"DAGs {sorted(set(dag_ids) - {d['dag_id'] for d in dags})} did not appear")
            time.sleep(2)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["health", "wait-healthy", "dags", "trigger"])
    p.add_argument("dag_id", nargs="?", help="for trigger")
    p.add_argument("--conf", default="{}", help="JSON params for trigger")
    p.add_argument("--wait", action="store_true", help="trigger: wait for the run to finish")
    p.add_argument("--url", default=None, help="Airflow API URL (default FLYWHEEL_AIRFLOW_URL or :8080)")
    p.add_argument("--expect", nargs="*", default=[], help="dags: DAG ids that must be present")


def _run(args: argparse.Namespace, settings: Settings) -> int:
    client = AirflowClient(args.url or default_url())
    if args.action == "health":
        print(json.dumps(client.health(), indent=2))
    elif args.action == "wait-healthy":
        health = client.wait_healthy()
        print("airflow: healthy (" + ", ".join(f"{k} {v['status']}" for k, v in health.items()) + ")")
    elif args.action == "dags":
        dags = client.wait_for_dags(args.expect)
        for d in sorted(dags, key=lambda d: d["dag_id"]):
            state = "paused" if d.get("is_paused") else "active"
            print(f"  {d['dag_id']:<32} {state:<7} {d.get('timetable_summary') or ''}")
        print(f"airflow: {len(dags)} DAGs, no import errors")
    else:
        if not args.dag_id:
            raise FlywheelError("trigger needs a DAG id")
        run_id = client.trigger(args.dag_id, json.loads(args.conf))
        print(f"triggered {args.dag_id} run {run_id}")
        if args.wait:
            state = client.wait_run(args.dag_id, run_id)
            print(f"{args.dag_id} run {run_id}: {state}")
            return 0 if state == "success" else 1
    return 0


register("airflow", "talk to the Airflow REST API: health, wait-healthy, dags, trigger", _run, _add_args)
