// Start a staffwork session and print its result (nats.js v3). The team is incident unless named:
//   npm install @nats-io/transport-node @nats-io/jetstream   (in examples/clients: npm ci)
//   STAFFWORK_NATS_URL=nats://127.0.0.1:4222 node submit.mjs [team]
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";

const team = process.argv[2] ?? "incident";
const nc = await connect({ servers: process.env.STAFFWORK_NATS_URL });
try {
  process.exitCode = await submit();
} finally {
  await nc.drain(); // the connection closes, so the process can exit
}

async function submit() {
  const request = { type: "session.submit.v1", task: "Why did checkout fail?", team };
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
    console.error(`no result for session ${reply.session_id} within 10 minutes`);
    return 1;
  }
  const result = msg.json();
  console.log(`session ${reply.session_id}: ${result.status}`);
  console.log(result.final_text);
  if (result.error) console.error(`${result.error.kind}: ${result.error.message}`);
  return result.status === "idle" ? 0 : 1;
}
