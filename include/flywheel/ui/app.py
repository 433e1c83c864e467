"""The Models view: a FastAPI app that Airflow's API server mounts under ``/flywheel`` (see plugins/).

Pages (HTML, for people in the Airflow UI) and the same data as JSON (``/api/...``, for scripts and
tests), all behind Airflow's authentication (``flywheel.ui.auth``). Reads go only through the model
store and the reports module, in a worker thread with a deadline, so an unreachable store becomes a
clear 503 page instead of a hung request or a traceback. Report files are served by validated key
only, inside a CSP sandbox so that a report's scripts cannot act as the signed-in user.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from flywheel.errors import FlywheelError, StoreError
from flywheel.models.store import ModelStore
from flywheel.monitoring import reports
from flywheel.settings import Settings
from flywheel.ui import auth, data
from flywheel.ui.airflow_api import ROLLBACK_DAG_ID, drift_dag_id, training_dag_id
from flywheel.ui.chart import metric_chart
from flywheel.ui.scorer import scorer_lag

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
T = TypeVar("T")
#: Store and Kafka reads run here, not on the event loop: a hung store can hold at most these threads,
#: and a request gives up on it at its deadline instead of waiting for the thread.
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="flywheel-ui")

#: Our own pages: scripts only from our own static file; embeddable by the Airflow UI only.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'")
#: Stored reports (Evidently's HTML inlines its scripts): an opaque origin that cannot read the session
#: cookie, call Airflow's API or load anything from outside.
REPORT_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
              "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; frame-ancestors 'self'")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                    "Cache-Control": "no-store"}


class StoreUnreachable(FlywheelError):
    """The model store did not answer (in time); the page says so instead of failing."""


_SETTINGS_TTL_S = 30.0
_settings_cache: list[tuple[float, Settings]] = []


def default_settings() -> Settings:
    """Settings as DAG tasks see them (Airflow connections overlaid), else from the environment.

    Kept for half a minute: connection lookups may go to a secrets backend, and a page asks several times.
    """
    if _settings_cache and time.monotonic() - _settings_cache[0][0] < _SETTINGS_TTL_S:
        return _settings_cache[0][1]
    try:
        from flywheel.airflow_support import settings_from_airflow

        settings = settings_from_airflow()
    except Exception as exc:  # outside Airflow, or connections not readable from the API server
        log.debug("Models view: Airflow connections not used: %s", exc)
        settings = Settings.from_env()
    _settings_cache[:] = [(time.monotonic(), settings)]
    return settings


def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["time"] = lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"
    env.filters["num"] = lambda v, digits=4: "-" if v is None else f"{v:.{digits}f}"
    env.filters["count"] = lambda v: "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)
    env.filters["value"] = _value
    env.filters["iso"] = _iso_minutes
    return env


def _value(v: float | None) -> str:
    """A gate value or threshold: counts without decimals, metrics with four."""
    if v is None:
        return "-"
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.4g}" if abs(v) < 1e-3 and v else f"{v:.4f}"


def _iso_minutes(text: str | None) -> str:
    """An ISO time from the metadata, shortened to the minute in UTC (the raw text if it does not parse)."""
    if not text:
        return "-"
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(text)


def create_app(settings_provider: Callable[[], Settings] | None = None, *, mount_prefix: str = "/flywheel",
               store_timeout_s: float = 20.0, lag_timeout_s: float = 1.5) -> FastAPI:
    """The app; ``settings_provider`` is called per request (cheap) so a changed connection is picked up."""
    settings_of = settings_provider or default_settings
    templates = _templates()
    app = FastAPI(title="flywheel Models view", docs_url=None, redoc_url=None, openapi_url=None)

    def roots(request: Request) -> tuple[str, str]:
        """(this app's base path, Airflow's base path), from where the API server mounted us."""
        base = str(request.scope.get("root_path") or "").rstrip("/")
        airflow_root = base[: -len(mount_prefix)] if mount_prefix and base.endswith(mount_prefix) else ""
        return base, airflow_root

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        base, airflow_root = roots(request)
        html = templates.get_template(template).render(base=base, airflow_root=airflow_root,
                                                       rollback_dag=ROLLBACK_DAG_ID, **context)
        return HTMLResponse(html, status_code, headers={"Content-Security-Policy": PAGE_CSP, **SECURITY_HEADERS})

    def wants_json(request: Request) -> bool:
        return request.url.path.removeprefix(str(request.scope.get("root_path") or "")).startswith("/api/")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if wants_json(request):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=SECURITY_HEADERS)
        return page(request, "error.html", exc.status_code, title=_title(exc.status_code), message=str(exc.detail),
                    signed_out=exc.status_code in (401, 403))

    @app.exception_handler(StoreUnreachable)
    async def store_error(request: Request, exc: StoreUnreachable) -> Response:
        if wants_json(request):
            return JSONResponse({"detail": str(exc), "error": "store_unreachable"}, 503, headers=SECURITY_HEADERS)
        return page(request, "error.html", 503, title="Model store unreachable", message=str(exc), signed_out=False)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("Models view: %s failed", request.url.path)
        message = f"{type(exc).__name__} while reading the model store; the API server's log has the details."
        if wants_json(request):
            return JSONResponse({"detail": message}, 500, headers=SECURITY_HEADERS)
        return page(request, "error.html", 500, title="Error", message=message, signed_out=False)

    async def read(fn: Callable[[ModelStore], T]) -> T:
        """Run a store read in a worker thread with a deadline; any store failure is StoreUnreachable."""
        settings = settings_of()

        def work() -> T:
            return fn(ModelStore(settings.open_store()))

        try:
            return await asyncio.wait_for(_in_pool(work), timeout=store_timeout_s)
        except TimeoutError:
            raise StoreUnreachable(f"the model store {settings.store_url} did not answer within "
                                   f"{store_timeout_s:.0f} s") from None
        except (StoreError, OSError) as exc:
            raise StoreUnreachable(f"the model store {settings.store_url} could not be read: {exc}") from None

    def visible(user: Any, summaries: list[data.ModelSummary]) -> list[data.ModelSummary]:
        return [s for s in summaries if auth.can_read_model(user, s.name)]

    def checked_model(model: str) -> str:
        if not reports._MODEL_RE.fullmatch(model):
            raise HTTPException(404, f"no model named {model[:80]!r}")
        return model

    async def detail_or_404(user: Any, model: str) -> data.ModelDetail:
        auth.require_model_access(user, checked_model(model))
        detail = await read(lambda models: data.model_detail(models, model))
        if detail is None:
            raise HTTPException(404, f"the model store has no model {model!r}")
        return detail

    # -- pages -------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{roots(request)[0]}/models", 307)

    @app.get("/models", response_class=HTMLResponse)
    async def models_page(request: Request, user: auth.CurrentUser) -> HTMLResponse:
        summaries = visible(user, await read(data.list_models))
        return page(request, "models.html", models=summaries, user=auth.user_name(user),
                    store_url=settings_of().store_url, training_dag_id=training_dag_id)

    @app.get("/models/{model}", response_class=HTMLResponse)
    async def model_page(request: Request, model: str, user: auth.CurrentUser) -> HTMLResponse:
        detail = await detail_or_404(user, model)
        series = data.metric_series(detail)
        return page(request, "model.html", d=detail, s=detail.summary, chart=metric_chart(series, data.MAIN_METRIC),
                    metric=data.MAIN_METRIC, user=auth.user_name(user), training_dag=training_dag_id(model),
                    drift_dag=drift_dag_id(model))

    @app.get("/models/{model}/reports/{version}/{stamp}", response_class=HTMLResponse)
    async def report_page(request: Request, model: str, version: int, stamp: str,
                          user: auth.CurrentUser) -> HTMLResponse:
        auth.require_model_access(user, checked_model(model))
        key = f"{reports.REPORTS_ROOT}/{model}/v{version:06d}/{stamp}/summary.json"
        try:
            reports.parse_report_key(key)
        except reports.ReportKeyError:
            raise HTTPException(404, "no such drift report") from None

        def load(models: ModelStore) -> tuple[reports.ReportRef, dict[str, Any] | None] | None:
            found = [r for r in reports.list_reports(models.store, model) if r.version == version and r.stamp == stamp]
            return (found[0], reports.read_summary(models.store, found[0])) if found else None

        found = await read(load)
        if found is None:
            raise HTTPException(404, f"no drift report of {model} v{version} at {stamp}")
        ref, summary = found
        return page(request, "report.html", model=model, ref=ref, summary=summary or {}, user=auth.user_name(user))

    @app.get("/files/{key:path}")
    async def report_file(key: str, user: auth.CurrentUser) -> Response:
        """A stored report file, by its exact key; nothing else of the store is reachable here."""
        try:
            ref = reports.parse_report_key(key)
        except reports.ReportKeyError:
            raise HTTPException(404, "not a drift report file") from None
        auth.require_model_access(user, ref.model)

        def load(models: ModelStore) -> tuple[bytes, str] | None:
            try:
                return reports.read_report_file(models.store, key)
            except reports.ReportKeyError:
                return None

        found = await read(load)
        if found is None:
            raise HTTPException(404, "no such drift report file")
        body, media_type = found
        headers = {"Content-Security-Policy": REPORT_CSP, **SECURITY_HEADERS}
        if not media_type.startswith("text/html"):
            headers["Content-Disposition"] = f'inline; filename="{ref.model}-v{ref.version}-{ref.stamp}-{ref.files[0]}"'
        return Response(body, media_type=media_type, headers=headers)

    # -- JSON --------------------------------------------------------------------------------------

    @app.get("/api/models")
    async def models_json(user: auth.CurrentUser) -> JSONResponse:
        summaries = visible(user, await read(data.list_models))
        return JSONResponse({"models": [_summary_json(s) for s in summaries]}, headers=SECURITY_HEADERS)

    @app.get("/api/models/{model}")
    async def model_json(model: str, user: auth.CurrentUser) -> JSONResponse:
        detail = await detail_or_404(user, model)
        body = {"model": _summary_json(detail.summary),
                "versions": [{**asdict(v), "rolled_back_to": v.rolled_back_to} for v in detail.versions],
                "history": detail.history,
                "reports": [{**{k: v for k, v in r.items() if k != "ref"}, "version": r["ref"].version,
                             "checked_at": r["ref"].checked_at.isoformat(), "files": list(r["ref"].files),
                             "html_key": r["ref"].key("drift.html") if r["ref"].has_html else None}
                            for r in detail.reports],
                "chart": data.metric_series(detail)}
        return JSONResponse(body, headers=SECURITY_HEADERS)

    @app.get("/api/models/{model}/scorer")
    async def scorer_json(model: str, user: auth.CurrentUser) -> JSONResponse:
        auth.require_model_access(user, checked_model(model))
        settings = settings_of()
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(_in_pool(lambda: scorer_lag(settings, model, lag_timeout_s)),
                                            timeout=lag_timeout_s + 1.0)
        except TimeoutError:
            result = {"known": False, "reason": "the broker did not answer in time"}
        return JSONResponse({**result, "seconds": round(time.monotonic() - started, 3)}, headers=SECURITY_HEADERS)

    @app.get("/static/models.js", include_in_schema=False)
    async def script() -> Response:
        return Response((HERE / "static" / "models.js").read_bytes(), media_type="text/javascript",
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    return app


def _in_pool(fn: Callable[[], T]) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(_POOL, fn)


def _title(status_code: int) -> str:
    return {401: "Not signed in", 403: "Not allowed", 404: "Not found"}.get(status_code, "Error")


def _summary_json(s: data.ModelSummary) -> dict[str, Any]:
    out = asdict(s)
    if s.drift is not None:
        out["drift"] = {**{k: v for k, v in asdict(s.drift).items() if k != "report"}, "label": s.drift.label,
                        "report_key": s.drift.report.key("drift.html") if s.drift.report.has_html else None}
    return out
