// The lead's page: create queues, watch progress, read agreement and human win rates.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;

async function signIn(event) {
  if (event) event.preventDefault();
  if ($("key").value) Api.setKey($("key").value.trim());
  try {
    const me = await Api.call("GET", "/v1/labeling/me");
    if (me.role !== "admin") throw new Error("this page needs an admin key");
    $("who").textContent = me.labeler + " (" + me.role + ")";
    $("login").classList.add("hidden");
    $("lead").classList.remove("hidden");
    await loadQueues();
  } catch (err) {
    Api.forget();
    setStatus($("login-status"), err.message, "error");
  }
}

async function loadQueues() {
  const { queues } = await Api.call("GET", "/v1/labeling/queues");
  const body = $("queue-table").querySelector("tbody");
  body.replaceChildren(...queues.map((q) => el("tr", { class: "clickable", "data-queue": q.id,
      onclick: () => showQueue(q) },
    el("td", {}, q.name), el("td", {}, q.source), el("td", {}, q.task), el("td", {}, q.k),
    el("td", {}, q.overlap), el("td", {}, q.items),
    el("td", {}, `${q.judgments_done}/${q.judgments_needed}`), el("td", {}, q.status))));
  if (current) {
    const again = queues.find((q) => q.id === current.id);
    if (again) await showQueue(again);
  }
}

async function showQueue(q) {
  current = q;
  const [progress, agreement] = await Promise.all([
    Api.call("GET", `/v1/labeling/queues/${q.id}/progress`),
    Api.call("GET", `/v1/labeling/queues/${q.id}/agreement`)]);
  $("detail").classList.remove("hidden");
  $("detail-name").textContent = q.name;
  $("m-agree").textContent = fmt(agreement.pairwise_agreement);
  $("m-alpha").textContent = fmt(agreement.krippendorff_alpha);
  $("m-overlap").textContent = agreement.items_with_overlap;
  $("m-done").textContent = `${progress.judgments_done} / ${progress.judgments_needed}`;
  $("m-seconds").textContent = fmt(progress.median_seconds_per_item, 1);
  const byName = Object.fromEntries(agreement.labelers.map((x) => [x.labeler, x]));
  const rows = progress.labelers.map((p) => {
    const a = byName[p.labeler] || {};
    return el("tr", { class: a.flagged ? "flagged" : "", "data-labeler": p.labeler },
      el("td", {}, p.labeler), el("td", {}, p.done), el("td", {}, p.skipped),
      el("td", {}, fmt(p.mean_seconds_per_item, 1)), el("td", {}, a.items ?? 0),
      el("td", { class: "agreement" }, fmt(a.agreement)),
      el("td", {}, a.flagged ? "⚠ far below the others" : ""));
  });
  $("labeler-table").querySelector("tbody").replaceChildren(...rows);
  $("winrate-box").classList.toggle("hidden", q.source !== "candidate");
  if (q.source === "candidate") {
    const w = await Api.call("GET", `/v1/labeling/queues/${q.id}/winrate`);
    $("m-winrate").textContent = w.rate === null ? "—" :
      `${(100 * w.rate).toFixed(0)}% [${(100 * w.lower).toFixed(0)}–${(100 * w.upper).toFixed(0)}] n=${w.n}`;
  }
}

async function exportAgreement() {
  const data = await Api.call("GET", `/v1/labeling/queues/${current.id}/agreement`);
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const a = el("a", { href: URL.createObjectURL(blob), download: `agreement-${current.name}.json` });
  document.body.append(a); a.click(); a.remove();
}

async function readPrompts(file) {
  if (!file) return null;
  const text = await file.text();
  if (file.name.endsWith(".txt")) return text.split("\n").map((l) => l.trim()).filter(Boolean);
  if (file.name.endsWith(".json")) return JSON.parse(text).map((x) => x.prompt ?? x);
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l).prompt);
}

async function createQueue(event) {
  event.preventDefault();
  const f = new FormData(event.target);
  const num = (k) => Number(f.get(k));
  const body = {
    name: f.get("name"), source: f.get("source"), task: f.get("task"), k: num("k"),
    samples_per_prompt: num("samples_per_prompt"), overlap: num("overlap"),
    traffic_prompts: num("traffic_prompts"), chat: f.get("chat") === "on",
    sampling: { temperature: num("temperature"), top_p: num("top_p"), max_tokens: num("max_tokens") },
    candidate: f.get("candidate") || null, live: f.get("live") || null,
    instructions: f.get("instructions") || null,
  };
  const status = $("create-status");
  try {
    body.prompts = await readPrompts(event.target.file.files[0]);
    setStatus(status, "Creating… (generating answers can take a while)");
    const made = await Api.call("POST", "/v1/labeling/queues", body);
    setStatus(status, `Created queue ${made.id} with ${made.items} items.`, "ok");
    await loadQueues();
  } catch (err) { setStatus(status, err.message, "error"); }
}

async function closeQueue() {
  await Api.call("POST", `/v1/labeling/queues/${current.id}/close`);
  await loadQueues();
}

$("login-form").addEventListener("submit", signIn);
$("create-form").addEventListener("submit", createQueue);
$("export").addEventListener("click", exportAgreement);
$("refresh").addEventListener("click", loadQueues);
$("close-queue").addEventListener("click", closeQueue);
if (Api.key()) signIn();
