// The Models view's only script: fill in scorer figures after the page is shown (so a slow broker never
// delays the page), and trigger a rollback through Airflow's own REST API after a confirmation.
//
// The confirmation is a <dialog>, not window.confirm(): the Airflow UI embeds this page in an iframe
// sandboxed without allow-modals, where confirm() returns false without asking anyone.
// The request carries the user's own Airflow session (the HttpOnly _token cookie, same origin), so the
// run is authorised and audited as that user, exactly like a run triggered in Airflow's UI.
(function () {
  "use strict";
  const airflowRoot = document.body.dataset.airflowRoot || "";

  function lagText(r) {
    if (!r || !r.known) return "unknown";
    const parts = [];
    if (r.e2e_ms_p99 !== null && r.e2e_ms_p99 !== undefined) parts.push(`lag p99 ${r.e2e_ms_p99} ms`);
    if (r.e2e_ms_p50 !== null && r.e2e_ms_p50 !== undefined) parts.push(`p50 ${r.e2e_ms_p50} ms`);
    parts.push(`${r.events_per_s} events/s`);
    parts.push(`${r.members} scorer${r.members === 1 ? "" : "s"}`);
    if (r.model_versions && r.model_versions.length) parts.push(`serving v${r.model_versions.join(", v")}`);
    return parts.join(", ") + ` (${Math.round(r.age_s)} s ago)`;
  }

  document.querySelectorAll("[data-lag-url]").forEach(async (cell) => {
    try {
      const resp = await fetch(cell.dataset.lagUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
      const r = await resp.json();
      cell.textContent = resp.ok ? lagText(r) : "unknown";
      cell.title = r.reason || "";
      if (!r.known) cell.classList.add("muted");
    } catch (err) {
      cell.textContent = "unknown";
    }
  });

  const dialog = document.getElementById("rollback-dialog");
  const status = document.getElementById("rollback-status");
  if (!dialog || !status) return;
  const dagId = dialog.dataset.dag;
  let pending = null;

  function say(text, cls) {
    status.textContent = text;
    status.className = cls || "";
  }

  document.querySelectorAll("button.rollback").forEach((btn) => {
    btn.addEventListener("click", () => {
      pending = { model: btn.dataset.model, version: Number(btn.dataset.version) };
      document.getElementById("rb-model").textContent = pending.model;
      document.getElementById("rb-version").textContent = String(pending.version);
      document.getElementById("rb-champion").textContent = btn.dataset.champion || "-";
      dialog.returnValue = "";
      dialog.showModal();
    });
  });

  async function watch(runUrl, runLink, version) {
    for (let i = 0; i < 120; i++) {
      await new Promise((done) => setTimeout(done, 2000));
      let run;
      try {
        const resp = await fetch(runUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!resp.ok) continue;
        run = await resp.json();
      } catch (err) {
        continue;
      }
      status.querySelector(".run-state").textContent = run.state;
      if (run.state === "success") {
        say(`Rolled back to v${version} (run ${run.dag_run_id}: success). Reloading...`, "pass");
        setTimeout(() => window.location.reload(), 800);
        return;
      }
      if (run.state === "failed") {
        say(`The rollback run ${run.dag_run_id} failed: see its task log in Airflow (${runLink}).`, "fail");
        return;
      }
    }
  }

  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "confirm" || !pending) return;
    const { model, version } = pending;
    pending = null;
    const reason = document.getElementById("rb-reason").value.trim();
    document.querySelectorAll("button.rollback").forEach((b) => { b.disabled = true; });
    say(`Triggering ${dagId} for ${model} v${version}...`);
    let resp, body;
    try {
      resp = await fetch(`${airflowRoot}/api/v2/dags/${encodeURIComponent(dagId)}/dagRuns`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ logical_date: null, conf: { model: model, version: version, reason: reason } }),
      });
      body = await resp.json().catch(() => ({}));
    } catch (err) {
      say(`Airflow's API did not answer: ${err}`, "fail");
      return;
    }
    if (!resp.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
      say(`Airflow refused the rollback (HTTP ${resp.status}): ${detail}`, "fail");
      document.querySelectorAll("button.rollback").forEach((b) => { b.disabled = false; });
      return;
    }
    const runId = body.dag_run_id;
    const runLink = `${airflowRoot}/dags/${encodeURIComponent(dagId)}/runs/${encodeURIComponent(runId)}`;
    status.textContent = "";
    status.className = "pass";
    status.append(`Rollback to v${version} triggered as run `);
    const a = document.createElement("a");
    a.href = runLink;
    a.target = "_top";
    a.className = "run-id";
    a.textContent = runId;
    status.append(a, " (state: ");
    const state = document.createElement("span");
    state.className = "run-state";
    state.textContent = body.state || "queued";
    status.append(state, ").");
    watch(`${airflowRoot}/api/v2/dags/${encodeURIComponent(dagId)}/dagRuns/${encodeURIComponent(runId)}`, runLink, version);
  });
})();
