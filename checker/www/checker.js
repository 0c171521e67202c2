// The payload checker page: hands the pasted payload to the wasm binding
// (signalgate's own parsing, validation, fingerprints and resource building)
// and shows its report. No network calls beyond loading this page's files.
import init, { check } from "./pkg/signalgate_checker.js";

const $ = (id) => document.getElementById(id);
const payload = $("payload");
const highlight = $("highlight");

// Where the value (or key) a JSON pointer names starts and ends in `text`,
// found by walking the text itself; null when it cannot be found.
function locate(text, pointer) {
  const tokens = pointer.split("/").slice(1)
    .map((t) => t.replace(/~1/g, "/").replace(/~0/g, "~"));
  let i = 0;
  const ws = () => { while (i < text.length && /\s/.test(text[i])) i++; };
  const skipString = () => {
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    i++;
  };
  const skipValue = () => {
    ws();
    const open = text[i];
    if (open === '"') return skipString();
    if (open !== "{" && open !== "[") {
      while (i < text.length && !/[,\]}\s]/.test(text[i])) i++;
      return;
    }
    let depth = 0;
    while (i < text.length) {
      const c = text[i];
      if (c === '"') { skipString(); continue; }
      if (c === "{" || c === "[") depth++;
      if (c === "}" || c === "]") { depth--; if (depth === 0) { i++; return; } }
      i++;
    }
  };
  for (let t = 0; t < tokens.length; t++) {
    ws();
    const token = tokens[t];
    if (text[i] === "[") {
      i++;
      const want = Number(token);
      for (let n = 0; ; n++) {
        ws();
        if (text[i] === "]" || i >= text.length) return null;
        if (n === want) break;
        skipValue(); ws();
        if (text[i] === ",") i++;
      }
    } else if (text[i] === "{") {
      i++;
      let found = false;
      while (i < text.length) {
        ws();
        if (text[i] === "}") return null;
        const keyStart = i;
        skipString();
        let key;
        try { key = JSON.parse(text.slice(keyStart, i)); } catch { return null; }
        ws();
        if (text[i] === ":") i++;
        if (key === token) {
          found = true;
          if (t === tokens.length - 1) {
            // The last token: mark the member, key and value.
            const start = keyStart;
            skipValue();
            return [start, i];
          }
          break;
        }
        skipValue(); ws();
        if (text[i] === ",") i++;
      }
      if (!found) return null;
    } else {
      return null;
    }
  }
  ws();
  const start = i;
  skipValue();
  return [start, Math.max(i, start + 1)];
}

function escape(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function mark(pointer) {
  const text = payload.value;
  let span = null;
  if (pointer) {
    // A missing member: mark the object that should hold it.
    for (let p = pointer; p && !span; p = p.slice(0, p.lastIndexOf("/"))) span = locate(text, p);
  }
  if (!span) { highlight.textContent = text + "\n"; return; }
  const [a, b] = span;
  highlight.innerHTML = escape(text.slice(0, a)) + '<mark id="pointer-mark">' +
    escape(text.slice(a, b)) + "</mark>" + escape(text.slice(b)) + "\n";
  const m = $("pointer-mark");
  if (m) payload.scrollTop = Math.max(0, m.offsetTop - 40);
}

function show(report) {
  const status = $("status");
  const problem = report.problem;
  $("signals").replaceChildren();
  $("problem").hidden = !problem;
  if (problem) {
    status.textContent = `Refused (${report.shape}): the edge answers ${problem.status}`;
    status.className = "status bad";
    $("problem-status").textContent = `${problem.status} ${problem.title}`;
    $("problem-field").textContent = problem.field ?? "(the body)";
    $("problem-detail").textContent = problem.detail;
    $("problem-json").textContent = JSON.stringify(problem, null, 2);
    mark(problem.field ?? "");
    return;
  }
  mark("");
  const n = report.signals.length;
  status.textContent = `Valid (${report.shape}): ${n} signal${n === 1 ? "" : "s"}`;
  status.className = "status ok";
  const template = $("signal-template");
  for (const s of report.signals) {
    const node = template.content.cloneNode(true);
    const article = node.querySelector(".signal");
    const set = (cls, v) => { node.querySelector("." + cls).textContent = v; };
    set("title", s.alert === null ? "event" : `alert ${s.alert}`);
    const id = s.identity;
    set("type", id.type);
    set("namespace", id.namespace);
    set("target", `${id.target.kind}/${id.target.name}` +
      (id.target.namespace ? ` (namespace ${id.target.namespace})` : " (cluster-scoped)"));
    set("name", id.name);
    set("sig-status", id.status);
    set("fingerprint", s.fingerprint);
    set("yaml", s.yaml);
    article.dataset.fingerprint = s.fingerprint;
    $("signals").appendChild(node);
  }
}

function run() {
  const max = Math.max(1, Number($("max-alerts").value) || 1);
  const report = JSON.parse(check(payload.value, $("shape").value, $("source").value,
    $("fallback").value, max, Date.now()));
  show(report);
  document.body.dataset.checked = String(Number(document.body.dataset.checked ?? 0) + 1);
}

const editor = document.querySelector(".editor");
editor.addEventListener("dragover", (e) => { e.preventDefault(); editor.classList.add("dragging"); });
editor.addEventListener("dragleave", () => editor.classList.remove("dragging"));
editor.addEventListener("drop", async (e) => {
  e.preventDefault();
  editor.classList.remove("dragging");
  const file = e.dataTransfer.files[0];
  if (file) { payload.value = await file.text(); run(); }
});
payload.addEventListener("scroll", () => { highlight.scrollTop = payload.scrollTop; });
payload.addEventListener("input", () => mark(""));
$("run").addEventListener("click", run);

await init();
$("status").textContent = "Ready: paste a payload and press Check.";
document.body.dataset.ready = "true";
