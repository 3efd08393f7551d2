// The live tail of the log page and the action buttons of the dead-letter page: no
// framework, no build step.
"use strict";

function cell(row, text, html) {
  const td = document.createElement("td");
  if (html) td.appendChild(html); else td.textContent = text;
  row.appendChild(td);
}

function logRow(n) {
  const row = document.createElement("tr");
  row.className = "new";
  cell(row, String(n.id));
  const link = document.createElement("a");
  link.className = "stream";
  link.href = "/streams/" + encodeURIComponent(n.stream_id);
  link.textContent = n.stream_id;
  cell(row, "", link);
  cell(row, String(n.version));
  cell(row, n.topic);
  cell(row, n.time);
  cell(row, String(n.size));
  const pre = document.createElement("pre");
  pre.className = n.payload === null ? "undecodable" : "payload";
  pre.textContent = n.payload === null ? "undecodable: " + n.undecodable : JSON.stringify(n.payload, null, 2);
  cell(row, "", pre);
  return row;
}

function startTail(table) {
  const status = document.getElementById("tail-status");
  const head = document.getElementById("head");
  const source = new EventSource(table.dataset.tail);
  source.onopen = () => { if (status) status.textContent = "Live tail: connected"; };
  source.onerror = () => { if (status) status.textContent = "Live tail: reconnecting…"; };
  source.addEventListener("notification", (e) => {
    const n = JSON.parse(e.data);
    table.tBodies[0].prepend(logRow(n));
    if (head) head.textContent = String(n.id);
  });
}

function startActions() {
  const result = document.getElementById("action-result");
  for (const button of document.querySelectorAll("button.action")) {
    button.addEventListener("click", async () => {
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      const response = await fetch(button.dataset.action, {
        method: "POST",
        headers: { "x-eventfold-action": "1" },
        credentials: "same-origin",
      });
      const body = await response.json();
      result.textContent = response.ok
        ? body.action + " " + body.queue + ": " + body.handled + " of " + body.total + " done, " + body.left + " left"
        : "error: " + body.error;
      result.className = response.ok ? "done" : "error";
      button.disabled = false;
      // What is left in the queue now; the letters listed are gone when none is.
      const section = button.closest("section.queue");
      if (response.ok && section) {
        section.querySelector(".total").textContent = String(body.left);
        const letters = section.querySelector("table.letters");
        if (body.left === 0 && letters) letters.remove();
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.querySelector("table[data-tail]");
  if (table) startTail(table);
  startActions();
});
