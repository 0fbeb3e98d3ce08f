// Shared by both pages: the API key (kept in this tab's sessionStorage) and API calls.
"use strict";

const Api = {
  key() { return sessionStorage.getItem("rlhf-key") || ""; },
  setKey(k) { sessionStorage.setItem("rlhf-key", k); },
  forget() { sessionStorage.removeItem("rlhf-key"); },
  async call(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    if (Api.key()) headers.Authorization = "Bearer " + Api.key();
    const r = await fetch(path, { method, headers,
                                  body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 204) return null;
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const msg = (data.error && data.error.message) || ("HTTP " + r.status);
      const err = new Error(msg); err.status = r.status; throw err;
    }
    return data;
  },
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setStatus(node, text, kind) {
  node.textContent = text || "";
  node.className = "status" + (kind ? " " + kind : "");
}

function fmt(x, digits = 2) {
  return x === null || x === undefined ? "—" : Number(x).toFixed(digits);
}
