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

async function call(path, options) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok && response.status !== 404) {
    throw new Error((body && (body.detail || body.title)) || response.statusText);
  }
  return { status: response.status, body };
}

const eventRow = (e) => [
  e.index, e.event.at, e.event.type, e.event.message_id || "", e.event.sender || "",
  e.event.recipient || "", e.event.purpose || "", (e.event.lawful_basis || []).join(" "),
];

async function searchSubject(event) {
  event.preventDefault();
  const ids = {};
  for (const name of ["nhs_number", "given_name", "family_name", "date_of_birth"]) {
    const value = document.getElementById(name).value.trim();
    if (value) ids[name] = value;
  }
  try {
    const { body } = await call("/v1/audit/subject", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(ids),
    });
    const disclosures = body.entries.filter((e) => e.event.type === "disclosed").length;
    document.getElementById("subject-summary").textContent =
      `${body.entries.length} event(s), ${disclosures} disclosure(s)`;
    fill("subject-results", body.entries.map(eventRow));
    event.target.reset(); // identifiers do not stay on screen after the search
  } catch (exc) {
    showError(`Search failed: ${exc.message}`);
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
