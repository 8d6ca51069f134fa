// The chatq console's only script: refreshes server-rendered fragments, follows a job's events
// (EventSource; the key travels as the console's HttpOnly cookie, never in a URL) and drives the
// playground. No framework, nothing fetched from elsewhere.
"use strict";

const SCRIPT_HEADER = { "X-Chatq-Console": "1" };
const EVENT_TYPES = ["job.started", "job.restarted", "message.delta", "provider.retry", "tool.call",
  "tool.result", "job.succeeded", "job.failed", "job.cancelled"];
const TERMINAL = new Set(["job.succeeded", "job.failed", "job.cancelled"]);

// Elements with data-refresh: their content is re-fetched every data-every ms while the tab is visible.
function startRefreshing(el) {
  const every = Number(el.dataset.every || 2000);
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(el.dataset.refresh, { credentials: "same-origin" });
      if (r.status === 401) { location.href = "/ui/login"; return; }
      if (r.ok) el.innerHTML = await r.text();
    } catch (e) { /* the next tick tries again */ } finally { busy = false; }
  }, every);
}

// Follow a job's event stream: handlers.event(type, data, seq) for each event, handlers.end(type) once.
function follow(url, handlers) {
  const source = new EventSource(url, { withCredentials: true });
  let ended = false;
  const finish = (how) => { if (!ended) { ended = true; source.close(); handlers.end(how); } };
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (e) => {
      handlers.event(type, JSON.parse(e.data), Number(e.lastEventId));
      if (TERMINAL.has(type)) finish(type);
    });
  }
  source.addEventListener("error", (e) => {
    if (e.data) { handlers.event("error", JSON.parse(e.data), 0); finish("error"); }  // the server's error event
    else if (source.readyState === EventSource.CLOSED) finish("closed");  // e.g. 204: nothing can follow
  });
  source.onopen = () => handlers.open && handlers.open();
  return source;
}

// The reply as it streams: text per provider call; a retried call's text is dropped, a restart drops all.
function replyBuilder() {
  let calls = new Map();
  return {
    apply(type, data) {
      if (type === "message.delta") calls.set(data.call, (calls.get(data.call) || "") + data.text);
      else if (type === "provider.retry") calls.delete(data.call);
      else if (type === "job.restarted") calls = new Map();
      return [...calls.keys()].sort((a, b) => a - b).map((k) => calls.get(k)).join("");
    },
  };
}

function short(type, data) {
  if (type === "message.delta") return JSON.stringify(data.text);
  if (type === "tool.call") return `${data.name}(${data.arguments})`;
  if (type === "tool.result") return `${data.name} → ${data.ok ? "" : "failed: "}${String(data.output).slice(0, 200)}`;
  if (TERMINAL.has(type)) return data.error ? `${data.error.type}: ${data.error.message}` : (data.status || "");
  if (type === "error") return data.error ? `${data.error.type}: ${data.error.message}` : "";
  return JSON.stringify(data);
}

function jobPage(list) {
  const state = document.getElementById("stream-state");
  const reply = document.getElementById("reply");
  const record = document.getElementById("job-record");
  const builder = replyBuilder();
  follow(list.dataset.events, {
    open() { state.textContent = "live"; },
    event(type, data, seq) {
      const li = document.createElement("li");
      li.className = "event " + type.replace(".", "-");
      li.dataset.type = type;
      li.innerHTML = `<span class="seq"></span> <b></b> <span class="data"></span>`;
      li.querySelector(".seq").textContent = seq || "";
      li.querySelector("b").textContent = type;
      li.querySelector(".data").textContent = short(type, data);
      list.appendChild(li);
      reply.textContent = builder.apply(type, data);
    },
    async end(how) {
      state.textContent = how === "closed" ? "ended" : `ended (${how})`;
      state.dataset.ended = how;
      const r = await fetch(record.dataset.record, { credentials: "same-origin" });
      if (r.ok) record.innerHTML = await r.text();
    },
  });
}

function playground(form) {
  const transcript = document.getElementById("transcript");
  const errorBox = document.getElementById("chat-error");
  const session = form.querySelector("#session");
  const message = form.querySelector("#message");
  const send = form.querySelector("#send");
  const bubble = (role, text) => {
    const li = document.createElement("li");
    li.className = "msg " + role;
    li.innerHTML = `<div class="role"></div><div class="text"></div>`;
    li.querySelector(".role").textContent = role;
    li.querySelector(".text").textContent = text;
    transcript.appendChild(li);
    return li;
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    errorBox.hidden = true;
    const body = { message: message.value, agent: form.querySelector("#agent").value,
                   session_id: session.value.trim() || null };
    send.disabled = true;
    try {
      const r = await fetch(form.dataset.submit, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", ...SCRIPT_HEADER }, body: JSON.stringify(body),
      });
      const answer = await r.json();
      if (!r.ok) { errorBox.textContent = answer.error ? answer.error.message : r.statusText; errorBox.hidden = false; return; }
      session.value = answer.session_id;
      bubble("user", body.message);
      message.value = "";
      const li = bubble("assistant", "");
      li.dataset.job = answer.job_id;
      const link = document.createElement("a");
      link.href = form.dataset.jobs + answer.job_id;
      link.textContent = " job";
      li.querySelector(".role").appendChild(link);
      const text = li.querySelector(".text");
      const builder = replyBuilder();
      follow(form.dataset.jobs + answer.job_id + "/events", {
        event(type, data) {
          text.textContent = builder.apply(type, data);
          if (type === "tool.call") {
            const t = document.createElement("div");
            t.className = "tool-call";
            t.textContent = `→ ${data.name}(${data.arguments})`;
            li.insertBefore(t, text);
          }
          if (type === "job.succeeded" && data.result) text.textContent = data.result.content || "";
          if ((type === "job.failed" || type === "job.cancelled" || type === "error") && data.error) {
            const err = document.createElement("div");
            err.className = "error";
            err.textContent = `${data.error.type}: ${data.error.message}`;
            li.appendChild(err);
          }
        },
        end(how) { li.dataset.ended = how; send.disabled = false; },
      });
    } catch (err) {
      errorBox.textContent = String(err); errorBox.hidden = false;
    } finally {
      if (!transcript.lastElementChild || transcript.lastElementChild.dataset.ended !== undefined) send.disabled = false;
    }
  });
}

document.addEventListener("click", async (e) => {
  const button = e.target.closest("[data-cancel]");
  if (!button) return;
  button.disabled = true;
  await fetch(button.dataset.cancel, { method: "POST", credentials: "same-origin", headers: SCRIPT_HEADER });
});

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(startRefreshing);
  // An operator's tenant switcher: picking a tenant submits its form (the button does without script).
  document.querySelectorAll("select[data-autosubmit]").forEach((s) => s.addEventListener("change", () => s.form.requestSubmit()));
  const events = document.getElementById("events");
  if (events) jobPage(events);
  const chat = document.getElementById("chat");
  if (chat) playground(chat);
});
