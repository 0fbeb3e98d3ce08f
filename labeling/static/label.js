// The labeler's page: sign in with a key, pick a queue, label items one after another.
// Answers arrive shuffled and without their policy version; slots are what the page shows.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { queue: null, item: null, flags: [], groups: [], history: [], tieNext: false,
                preferred: null, scores: [] };

function show(section) {
  for (const id of ["login", "queues", "task", "empty"]) $(id).classList.toggle("hidden", id !== section);
}

async function signIn(event) {
  if (event) event.preventDefault();
  if ($("key").value) Api.setKey($("key").value.trim());
  try {
    const me = await Api.call("GET", "/v1/labeling/me");
    state.flags = (await Api.call("GET", "/v1/labeling/flags")).flags;
    $("who").textContent = me.labeler + " (" + me.role + ")";
    await listQueues();
  } catch (err) {
    Api.forget();
    setStatus($("login-status"), err.message, "error");
  }
}

async function listQueues() {
  const { queues } = await Api.call("GET", "/v1/labeling/queues");
  const list = $("queue-list");
  list.replaceChildren();
  if (!queues.length) list.append(el("p", { class: "muted" }, "No open queues."));
  for (const q of queues.filter((x) => x.status === "open")) {
    list.append(el("div", { class: "row" },
      el("button", { class: "primary", "data-queue": q.id, onclick: () => openQueue(q) }, q.name),
      el("span", { class: "muted" },
         `${q.task}, K=${q.k}, ${q.judgments_done}/${q.judgments_needed} judgments done`)));
  }
  show("queues");
}

async function openQueue(q) { state.queue = q; await nextItem(); }

async function nextItem() {
  setStatus($("task-status"), "");
  const item = await Api.call("GET", `/v1/labeling/queues/${state.queue.id}/next`);
  if (!item) { show("empty"); return; }
  Object.assign(state, { item, groups: [], history: [], tieNext: false, preferred: null,
                         scores: item.answers.map(() => null) });
  $("queue-name").textContent = state.queue.name;
  $("task-kind").textContent = item.task;
  $("instructions").textContent = item.instructions || "";
  $("prompt").textContent = item.prompt;
  $("note").value = "";
  $("demo-text").value = "";
  $("ranking-board").classList.toggle("hidden", item.task !== "ranking");
  $("comparison-board").classList.toggle("hidden", item.task !== "comparison");
  $("demo-board").classList.toggle("hidden", item.task !== "demonstration");
  renderAnswers();
  render();
  show("task");
  if (document.activeElement) document.activeElement.blur();  // keys go to the ranking
}

// -- ranking: groups[r] holds the slots at rank r + 1; history is the placement stack --------

function rankOf(slot) { return state.groups.findIndex((g) => g.includes(slot)); }

function place(slot, tie) {
  if (slot < 1 || slot > state.item.answers.length || rankOf(slot) >= 0) return;
  if (tie && state.groups.length) state.groups[state.groups.length - 1].push(slot);
  else state.groups.push([slot]);
  state.history.push(slot);
  state.tieNext = false;
  render();
}

function placeInGroup(slot, group) {  // drag and drop onto an existing rank (a tie)
  unplace(slot);
  if (group >= state.groups.length) state.groups.push([slot]);
  else state.groups[group].push(slot);
  state.history.push(slot);
  render();
}

function unplace(slot) {
  const r = rankOf(slot);
  if (r < 0) return;
  state.groups[r] = state.groups[r].filter((s) => s !== slot);
  state.groups = state.groups.filter((g) => g.length);
  state.history = state.history.filter((s) => s !== slot);
}

function undo() {
  const last = state.history.pop();
  if (last !== undefined) { unplace(last); render(); }
}

function ranks() { return state.item.answers.map((a) => rankOf(a.slot) + 1); }

function complete() {
  const t = state.item.task;
  if (t === "ranking") return ranks().every((r) => r > 0);
  if (t === "comparison") return state.preferred !== null;
  if (t === "rating") return state.scores.every((s) => s !== null);
  return $("demo-text").value.trim().length > 0;
}

function dropTarget(node, onDrop) {
  node.addEventListener("dragover", (e) => { e.preventDefault(); node.classList.add("drag-over"); });
  node.addEventListener("dragleave", () => node.classList.remove("drag-over"));
  node.addEventListener("drop", (e) => {
    e.preventDefault(); node.classList.remove("drag-over");
    onDrop(Number(e.dataTransfer.getData("text/plain")));
  });
}

function render() {
  const board = $("board");
  board.replaceChildren();
  state.groups.forEach((g, r) => {
    const node = el("div", { class: "group", "data-rank": r + 1 },
      el("div", { class: "label" }, `Rank ${r + 1}${g.length > 1 ? " (tie)" : ""}`),
      g.map((s) => el("span", { class: "chip" }, s)));
    dropTarget(node, (slot) => placeInGroup(slot, r));
    board.append(node);
  });
  const fresh = el("div", { class: "drop-new" }, "drop here for the next rank");
  dropTarget(fresh, (slot) => placeInGroup(slot, state.groups.length));
  board.append(fresh);
  $("tie-indicator").textContent = state.tieNext ? "next placement ties with the previous rank" : "";
  for (const card of document.querySelectorAll(".answer")) {
    const slot = Number(card.dataset.slot);
    const r = rankOf(slot);
    card.classList.toggle("placed", r >= 0);
    card.classList.toggle("selected",
      state.item.task === "comparison" && state.preferred === "ab"[slot - 1]);
    card.querySelector(".rankbadge").textContent =
      state.item.task === "ranking" && r >= 0 ? "rank " + (r + 1) :
      state.item.task === "rating" && state.scores[slot - 1] ? state.scores[slot - 1] + "/7" : "";
  }
  $("pref-chosen").textContent = state.preferred ? "chosen: " + state.preferred : "";
  $("submit").disabled = !complete();
}

function renderAnswers() {
  const box = $("answers");
  box.replaceChildren();
  const task = state.item.task;
  for (const a of state.item.answers) {
    const label = task === "comparison" ? "AB"[a.slot - 1] : a.slot;
    const flags = el("div", { class: "flags" }, state.flags.map((f) =>
      el("label", {}, el("input", { type: "checkbox", "data-flag": f }), " " + f.replaceAll("_", " "))));
    const card = el("div", { class: "answer", draggable: task === "ranking" ? "true" : "false",
                             "data-slot": a.slot },
      el("span", { class: "slot" }, label), el("span", { class: "rankbadge" }),
      el("div", { class: "text" }, a.text),
      task === "rating" ? el("div", { class: "row" }, "Score: ",
        [1, 2, 3, 4, 5, 6, 7].map((n) => el("button", { type: "button",
          onclick: () => { state.scores[a.slot - 1] = n; render(); } }, n))) : null,
      task === "demonstration" ? el("button", { type: "button",
        onclick: () => { $("demo-text").value = a.text; $("demo-text").focus(); render(); } },
        "Start from this answer") : null,
      el("details", {}, el("summary", {}, "Flags"), flags));
    card.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", String(a.slot)));
    box.append(card);
  }
  dropTarget(box, (slot) => { unplace(slot); render(); });
}

function flagsBySlot() {
  const out = {};
  for (const card of document.querySelectorAll(".answer")) {
    const on = [...card.querySelectorAll("input[data-flag]:checked")].map((i) => i.dataset.flag);
    if (on.length) out[card.dataset.slot] = on;
  }
  return out;
}

async function submit() {
  if (!complete()) return;
  const t = state.item.task;
  const body = { flags: flagsBySlot(), note: $("note").value || null };
  if (t === "ranking") body.ranks = ranks();
  if (t === "comparison") body.preferred = state.preferred;
  if (t === "rating") body.scores = state.scores;
  if (t === "demonstration") body.response = $("demo-text").value;
  $("submit").disabled = true;
  try {
    await Api.call("POST", `/v1/labeling/assignments/${state.item.assignment_id}/submit`, body);
    setStatus($("task-status"), "Submitted.", "ok");
    await nextItem();
  } catch (err) {
    setStatus($("task-status"), "Not submitted: " + err.message, "error");
    $("submit").disabled = false;
  }
}

async function skip() {
  try {
    await Api.call("POST", `/v1/labeling/assignments/${state.item.assignment_id}/skip`);
    await nextItem();
  } catch (err) { setStatus($("task-status"), err.message, "error"); }
}

function onKey(e) {
  if ($("task").classList.contains("hidden") || !state.item) return;
  const typing = ["TEXTAREA", "INPUT"].includes(document.activeElement.tagName)
    && document.activeElement.type !== "checkbox";
  if (typing) {
    if (e.key === "Enter" && e.ctrlKey) { e.preventDefault(); submit(); }
    return;
  }
  const t = state.item.task;
  if (e.key === "Enter") { e.preventDefault(); submit(); return; }
  if (e.key === "Escape") { e.preventDefault(); skip(); return; }
  if (t === "ranking") {
    if (/^[1-9]$/.test(e.key)) { e.preventDefault(); place(Number(e.key), state.tieNext); }
    else if (e.key === "Backspace") { e.preventDefault(); undo(); }
    else if (e.key === "t") { e.preventDefault(); state.tieNext = state.groups.length > 0; render(); }
  } else if (t === "comparison") {
    const pref = { a: "a", 1: "a", b: "b", 2: "b", t: "tie", "=": "tie", x: "both_bad" }[e.key];
    if (pref) { e.preventDefault(); state.preferred = pref; render(); }
  } else if (t === "rating" && /^[1-7]$/.test(e.key)) {
    const next = state.scores.findIndex((s) => s === null);
    if (next >= 0) { e.preventDefault(); state.scores[next] = Number(e.key); render(); }
  }
}

$("login-form").addEventListener("submit", signIn);
$("submit").addEventListener("click", submit);
$("skip").addEventListener("click", skip);
$("back").addEventListener("click", listQueues);
$("empty-back").addEventListener("click", listQueues);
$("demo-text").addEventListener("input", render);
for (const b of document.querySelectorAll("[data-pref]")) {
  b.addEventListener("click", () => { state.preferred = b.dataset.pref; render(); });
}
document.addEventListener("keydown", onKey);
if (Api.key()) signIn();
