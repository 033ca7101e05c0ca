// The IG view: reads the auditor's own API. Text goes in with textContent only.
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const value of cells) tr.append(el("td", value));
    body.append(tr);
  }
}

function showError(message) {
  const error = document.getElementById("error");
  error.textContent = message;
  error.hidden = false;
}

class Problem extends Error {
  constructor(body, fallback) {
    super((body && (body.detail || body.title)) || fallback);
    this.errors = (body && Array.isArray(body.errors)) ? body.errors : [];
  }
}

async function call(path, options) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok && response.status !== 404) throw new Problem(body, response.statusText);
  return { status: response.status, body };
}

const eventRow = (e) => [
  e.index, e.event.at, e.event.type, e.event.message_id || "", e.event.sender || "",
  e.event.recipient || "", e.event.purpose || "", (e.event.lawful_basis || []).join(" "),
];

const disclosureRow = (d) => [
  d.leaf_index, d.at, d.type, d.message_id, d.sender, d.recipient, d.purpose, d.lawful_basis,
  d.consent_state, d.field_groups, d.delivered_at, d.acknowledged_at, d.acknowledgement,
];

const FIELDS = ["nhs_number", "given_name", "family_name", "date_of_birth", "reason"];

// A problem's field errors go next to their fields (the server names them; never the values).
function showFieldErrors(errors) {
  for (const name of FIELDS) {
    document.getElementById(`${name}-error`).textContent = "";
    document.getElementById(name).removeAttribute("aria-invalid");
  }
  let placed = 0;
  for (const { field, problem } of errors) {
    const slot = document.getElementById(`${field}-error`);
    if (!slot || !FIELDS.includes(field)) continue;
    slot.textContent = problem;
    document.getElementById(field).setAttribute("aria-invalid", "true");
    placed += 1;
  }
  return placed;
}

function download(text) {
  const link = el("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  link.download = "disclosures.csv";
  link.click();
  URL.revokeObjectURL(link.href);
}

async function searchSubject(event) {
  event.preventDefault();
  const csv = event.submitter && event.submitter.id === "export-csv";
  const ids = {};
  for (const name of FIELDS) {
    const value = document.getElementById(name).value.trim();
    if (value) ids[name] = value;
  }
  document.getElementById("error").hidden = true;
  try {
    const { body } = await call(`/v1/audit/subject${csv ? "?format=csv" : ""}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(ids),
    });
    showFieldErrors([]);
    event.target.reset(); // identifiers do not stay on screen after the search
    if (csv) {
      download(body);
      document.getElementById("subject-summary").textContent =
        "Exported the disclosure report as CSV (recorded in the audit log).";
      return;
    }
    const s = body.searched;
    document.getElementById("subject-summary").textContent =
      `Searched by ${s.identifiers.join(", ").replaceAll("_", " ")} (pseudonyms ${s.pseudonyms.join(", ")}) ` +
      `as ${s.officer}: ${body.entries.length} event(s), ${body.disclosures.length} disclosure(s) or refusal(s). ` +
      `Recorded as audit event ${s.audit_event}.`;
    fill("subject-disclosures", body.disclosures.map(disclosureRow));
    fill("subject-results", body.entries.map(eventRow));
  } catch (exc) {
    const placed = exc instanceof Problem ? showFieldErrors(exc.errors) : 0;
    if (!placed) showError(`Search failed: ${exc.message}`);
  }
}

// Who overrode consent, why and on what paragraph: one row per disclosure or refusal.
async function loadOverrides() {
  const { body } = await call("/v1/audit/overrides?limit=1000");
  fill("overrides", body.overrides.map((o) => [
    o.leaf_index, o.at, o.type, o.override_by_role, o.override_by_id, o.override_reason,
    o.override_paragraph, o.sender, o.recipient, o.purpose, o.consent_state, o.message_id,
  ]));
}

async function loadCheckpoint() {
  const { status, body } = await call("/v1/audit/checkpoint");
  document.getElementById("checkpoint").textContent =
    status === 404 ? "No checkpoint has been signed yet." : body;
}

async function runVerify() {
  const result = document.getElementById("verify-result");
  result.textContent = "verifying…";
  try {
    const { body } = await call("/ui/ig/api/verify", { method: "POST" });
    result.textContent = body.ok
      ? `OK: ${body.entries} entries, ${body.checkpoints} checkpoint(s); signed checkpoints vouch for ${body.verified_size}, ${body.unattested} not yet attested`
      : `FAILED: ${body.problems.length} problem(s); first: ${body.problems[0]}`;
    result.dataset.ok = String(body.ok);
    const list = document.getElementById("verify-problems");
    list.replaceChildren(...body.problems.map((p) => el("li", p)));
  } catch (exc) {
    result.textContent = "";
    showError(`Verification could not run: ${exc.message}`);
  }
}

document.getElementById("subject-form").addEventListener("submit", searchSubject);
document.getElementById("verify").addEventListener("click", runVerify);
Promise.all([loadOverrides(), loadCheckpoint()])
  .then(() => { document.body.dataset.loaded = "true"; })
  .catch((exc) => showError(`Could not load: ${exc.message}`));
