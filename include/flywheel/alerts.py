"""Alerts: what happened, to which model, and what to look at, by email and Slack.

Every flywheel step a person should hear about calls :func:`alert`. It always logs; it also sends an
email through Airflow's SMTP notifier and a Slack message through the incoming-webhook notifier when
their Airflow connections exist (``flywheel_smtp`` / ``flywheel_slack`` by default). Delivery is best
effort and bounded in time: an unreachable mail server or webhook is logged, never raised, so an
alert can never fail the DAG that raised it.
"""

from __future__ import annotations

import html
import logging
import os
import threading
from typing import Any

log = logging.getLogger("flywheel.alerts")

KINDS = ("task_failed", "drift", "quality", "promoted", "rejected", "rollback", "internal_error", "scorer_failing")
DELIVERY_TIMEOUT_S = 20.0


def _connection_exists(conn_id: str) -> bool:
    try:
        from airflow.sdk import BaseHook

        BaseHook.get_connection(conn_id)
        return True
    except Exception:  # not defined (or no Airflow at all): that channel is off
        return False


def _subject(payload: dict[str, Any]) -> str:
    return f"[flywheel] {payload['kind'].replace('_', ' ')}: {payload['model']}"


def _send_email(payload: dict[str, Any], conn_id: str, to: str) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in payload.items() if k not in ("message",))
    body = f"<p>{html.escape(payload['message'])}</p><table>{rows}</table>"
    SmtpNotifier(to=to, from_email=os.environ.get("FLYWHEEL_ALERT_EMAIL_FROM", "flywheel@localhost"),
                 subject=_subject(payload), html_content=body, smtp_conn_id=conn_id).notify({})


def _send_slack(payload: dict[str, Any], conn_id: str) -> None:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    link = f"\n<{payload['link']}|details>" if payload.get("link") else ""
    text = f"*{_subject(payload)}*\n{payload['message']}{link}"
    SlackWebhookNotifier(slack_webhook_conn_id=conn_id, text=text, timeout=10).notify({})


def deliver(payload: dict[str, Any]) -> dict[str, str]:
    """Send to every configured channel; returns channel -> "sent" / "skipped" / "failed: ..."."""
    results: dict[str, str] = {}
    smtp_conn = os.environ.get("FLYWHEEL_SMTP_CONN_ID", "flywheel_smtp")
    slack_conn = os.environ.get("FLYWHEEL_SLACK_CONN_ID", "flywheel_slack")
    to = os.environ.get("FLYWHEEL_ALERT_EMAIL_TO", "")
    jobs = []
    if to and _connection_exists(smtp_conn):
        jobs.append(("email", lambda: _send_email(payload, smtp_conn, to)))
    else:
        results["email"] = "skipped (no FLYWHEEL_ALERT_EMAIL_TO or no connection)"
    if _connection_exists(slack_conn):
        jobs.append(("slack", lambda: _send_slack(payload, slack_conn)))
    else:
        results["slack"] = "skipped (no connection)"

    def attempt(channel: str, send: Any) -> None:
        try:
            send()
            results[channel] = "sent"
        except Exception as exc:  # never let an alert channel fail the caller
            results[channel] = f"failed: {exc}"
            log.warning("alert by %s failed: %s", channel, exc)

    threads = [threading.Thread(target=attempt, args=job, daemon=True) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DELIVERY_TIMEOUT_S)
    for channel, _ in jobs:
        results.setdefault(channel, f"failed: no answer within {DELIVERY_TIMEOUT_S:.0f}s")
    return results


def alert(kind: str, model: str, message: str, **details: Any) -> dict[str, Any]:
    """Log and deliver an alert; returns the payload with the delivery results."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}")
    payload = {"kind": kind, "model": model, "message": message, **details}
    log.warning("[flywheel %s] %s: %s", kind, model, message)
    payload["delivery"] = deliver(payload)
    return payload


def task_failure_callback(context: Any) -> None:
    """``on_failure_callback`` of every flywheel task: one short alert naming the DAG, task and error."""
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(ti, "dag_id", "?")
    model = next((dag_id[len(p):] for p in ("model_training_", "drift_monitor_") if dag_id.startswith(p)),
                 f"all models ({dag_id})")
    error = context.get("exception")
    alert("task_failed", str(model), f"{dag_id}.{getattr(ti, 'task_id', '?')} failed: {error}",
          dag_id=dag_id, run_id=context.get("run_id"), try_number=getattr(ti, "try_number", None),
          link=getattr(ti, "log_url", None))
