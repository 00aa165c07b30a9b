// Hand in the files below DIR as a staffwork session's inputs, start it and print its result (nats.js v3).
// The team is incident unless named:
//   npm install @nats-io/transport-node @nats-io/jetstream @nats-io/obj   (in examples/clients: npm ci)
//   STAFFWORK_NATS_URL=nats://127.0.0.1:4222 node submit.mjs DIR [TEAM]
import { randomBytes } from "node:crypto";
import { openAsBlob } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { join, sep } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";
import { connect } from "@nats-io/transport-node";

const [dir, team = "incident"] = process.argv.slice(2);
if (dir === undefined) {
  console.error("usage: node submit.mjs DIR [TEAM]");
  process.exit(1);
}
try {
  const nc = await connect({ servers: process.env.STAFFWORK_NATS_URL });
  try {
    process.exitCode = await submit(nc);
  } finally {
    await nc.drain(); // the connection closes, so the process can exit
  }
} catch (err) {
  console.error(err.message); // one line: no server, a missing DIR, a request timed out...
  process.exitCode = 1;
}

async function submit(nc) {
  // Choose the session id, so the inputs can be put before the session starts.
  const sessionId = `ses_${randomBytes(8).toString("hex")}`;
  const files = await new Objm(nc).open("sw_files");
  const inputs = [];
  for (const entry of (await readdir(dir, { recursive: true })).sort()) {
    const file = join(dir, entry);
    if (!(await stat(file)).isFile()) continue;
    const path = entry.split(sep).join("/");
    await files.put({ name: `${sessionId}/${path}` }, (await openAsBlob(file)).stream());
    inputs.push(path);
  }
  if (inputs.length === 0) {
    console.error(`no files below ${dir}`);
    return 1;
  }

  const request = {
    type: "session.submit.v1", task: "Why did checkout fail?", team, session_id: sessionId, inputs,
  };
  const reply = (await nc.request("sw.api.submit", JSON.stringify(request), { timeout: 10_000 })).json();
  if (!reply.accepted) {
    console.error(`refused: ${reply.error.kind}: ${reply.error.message}`);
    return 1;
  }
  for (const warning of reply.warnings ?? []) console.error(`warning: ${warning}`);
  // An ordered consumer on the log stream: it also replays a result stored before it started.
  const results = await jetstream(nc).consumers.get("sw_log", { filter_subjects: reply.result_subject });
  const msg = await results.next({ expires: 10 * 60_000 });
  if (msg === null) {
    console.error(`no result for session ${sessionId} within 10 minutes`);
    return 1;
  }
  const result = msg.json();
  console.log(`session ${sessionId}: ${result.status}`);
  console.log(result.final_text);
  if (result.error) console.error(`${result.error.kind}: ${result.error.message}`);
  return result.status === "idle" ? 0 : 1;
}
