"use strict";
// The admin page: pending pairs, dataset, retraining with live progress, model versions.
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) { sessionStorage.setItem("chatman-token", fromHash); history.replaceState(null, "", "/admin"); }
let token = sessionStorage.getItem("chatman-token");
const errorBox = document.getElementById("error");

async function api(path, body) {
  const options = { headers: { Authorization: "Bearer " + token, "X-ChatMan": "1" } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json();
  if (response.status === 401) { document.getElementById("login").hidden = false; }
  if (!response.ok) { errorBox.textContent = data.error || JSON.stringify(data.detail); throw new Error(errorBox.textContent); }
  errorBox.textContent = "";
  return data;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

async function loadPending() {
  const data = await api("/api/admin/pending");
  const box = document.getElementById("pending");
  box.replaceChildren();
  if (!data.pairs.length) box.append(el("p", {}, data.message));
  for (const pair of data.pairs) {
    const answer = el("textarea", { rows: 2, value: pair.answer });
    const act = (action, body) => async () => {
      await api(`/api/admin/pairs/${pair.id}/${action}`, body || {});
      refresh();
    };
    box.append(el("div", { className: "pair", id: `pair-${pair.id}` },
      el("p", {}, el("b", {}, `#${pair.id} `), pair.question),
      answer,
      el("button", { className: "approve", onclick: act("approve") }, "Approve"),
      el("button", { className: "correct", onclick: () => act("correct", { answer: answer.value })() }, "Save correction"),
      el("button", { className: "reject", onclick: act("reject") }, "Reject")));
  }
}

async function loadStatus() {
  const data = await api("/api/admin/trainstatus");
  document.getElementById("trainstatus").textContent = data.message;
  document.getElementById("notices").replaceChildren(
    ...data.notices.map((n) => el("li", {}, n.text)));
}

let lastModels = [];
async function loadModels() {
  const data = await api("/api/admin/models");
  lastModels = data.data.versions;
  const rows = data.data.versions.map((v) => el("tr", {},
    el("td", {}, v.version), el("td", {}, v.status),
    el("td", {}, v.metrics.persona_score ?? "-"), el("td", {}, v.metrics.retention ?? "-"),
    el("td", {}, v.directory ? el("a", { href: "#", onclick: (e) => { e.preventDefault(); showPlot(v.version); } }, "loss plot") : ""),
    el("td", {}, v.model_dir && v.status !== "active"
      ? el("button", { onclick: async () => { await api(`/api/admin/models/${v.version}/activate`, {}); refresh(); } }, "Activate") : "")));
  document.getElementById("models").replaceChildren(el("table", {},
    el("tr", {}, ...["version", "status", "persona", "retention", "", ""].map((h) => el("th", {}, h))), ...rows));
}

async function showPlot(version) {
  const response = await fetch(`/api/admin/models/${version}/loss.png`, { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) return;
  const img = el("img", { src: URL.createObjectURL(await response.blob()), alt: `loss of ${version}` });
  document.getElementById("models").append(img);
}

async function refresh() {
  if (!token) { document.getElementById("login").hidden = false; return; }
  await Promise.all([loadPending(), loadStatus(), loadModels(),
    api("/api/admin/dataset").then((d) => { document.getElementById("dataset").textContent = d.message; })]);
}

document.getElementById("save-token").onclick = () => {
  token = document.getElementById("token").value;
  sessionStorage.setItem("chatman-token", token);
  document.getElementById("login").hidden = true;
  refresh();
};
const trainMessage = document.getElementById("train-message");
document.getElementById("retrain").onclick = async () => {
  const steps = document.getElementById("max-steps").value;
  // Queued, or why not: the same dataset and settings already training or trained.
  trainMessage.textContent = (await api("/api/admin/retrain", steps ? { max_steps: Number(steps) } : {})).message;
  loadStatus();
};
document.getElementById("cancel-train").onclick = async () => {
  const button = document.getElementById("cancel-train");
  button.disabled = true;  // stopping a trainer takes a moment; one request is enough
  try {
    trainMessage.textContent = (await api("/api/admin/train/cancel", {})).message;
  } finally {
    button.disabled = false;
    refresh();
  }
};
document.getElementById("rollback").onclick = async () => {
  // Rolling back changes the model everybody talks to: ask first.
  const active = lastModels.find((v) => v.status === "active");
  if (!confirm(`Roll back from ${active ? active.version : "the active version"} to the version before it?`)) return;
  await api("/api/admin/rollback", {});
  refresh();
};
refresh();
setInterval(() => { if (token) loadStatus().catch(() => {}); }, 2000);
