// A status page as a staffwork tool service: a NATS micro service in JavaScript (nats.js v3:
// @nats-io/transport-node and @nats-io/services).
//
//   npm ci && node statuspage-service.mjs nats://127.0.0.1:4222   (or STAFFWORK_NATS_URL)
//
// Two tools over a fixed status page (the same data on every run):
//   component_status(component)  the component's status, uptime and open incident, if any
//   open_incidents()             every incident not yet resolved (no input: no input_schema)
// Each endpoint describes itself in its metadata (description, input_schema as JSON text); each
// reply is {"content": ..., "is_error": ...} and names who asked (requested_by, from the
// Staffwork-* headers). Bad input is an is_error reply; an unknown component is a micro error (404).
// The service's name is the second argument or STATUSPAGE_NAME (default "statuspage").

import { Svcm } from "@nats-io/services";
import { connect } from "@nats-io/transport-node";

const url = process.argv[2] ?? process.env.STAFFWORK_NATS_URL ?? "nats://127.0.0.1:4222";
const name = process.argv[3] ?? process.env.STATUSPAGE_NAME ?? "statuspage";

const COMPONENTS = {
  api: { status: "operational", uptime_90d: "99.98%" },
  checkout: { status: "degraded_performance", uptime_90d: "99.71%", incident: "INC-311" },
  payments: { status: "partial_outage", uptime_90d: "99.42%", incident: "INC-311" },
  search: { status: "operational", uptime_90d: "99.95%" },
};
const INCIDENTS = [
  {
    id: "INC-311",
    title: "Card payments time out at the gateway",
    status: "identified",
    started_at: "2024-05-14T14:02:00Z",
    components: ["payments", "checkout"],
  },
];

function requestedBy(msg) {
  const get = (key) => msg.headers?.get(key) ?? "";
  return {
    session: get("Staffwork-Session"),
    thread: get("Staffwork-Thread"),
    agent: get("Staffwork-Agent"),
    tool_use_id: get("Staffwork-Tool-Use-Id"),
  };
}

function reply(msg, content, isError = false) {
  msg.respond(JSON.stringify({ content, is_error: isError }));
}

function input(msg) {
  const text = msg.string();
  const value = text ? JSON.parse(text) : {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new TypeError("the input must be a JSON object");
  }
  return value;
}

function componentStatus(err, msg) {
  if (err) return;
  let args;
  try {
    args = input(msg);
  } catch (e) {
    return reply(msg, `bad input: ${e.message}`, true);
  }
  const component = args.component;
  if (typeof component !== "string" || !component) {
    return reply(msg, `'component' is required: one of ${Object.keys(COMPONENTS).join(", ")}`, true);
  }
  const entry = COMPONENTS[component];
  if (!entry) {
    return msg.respondError(404, `no component '${component}' on the status page`);
  }
  const incident = INCIDENTS.find((i) => i.id === entry.incident) ?? null;
  reply(msg, { component, ...entry, incident, requested_by: requestedBy(msg) });
}

function openIncidents(err, msg) {
  if (err) return;
  reply(msg, { incidents: INCIDENTS.filter((i) => i.status !== "resolved"), requested_by: requestedBy(msg) });
}

const nc = await connect({ servers: url, name: `${name}-service` });
const service = await new Svcm(nc).add({
  name,
  version: "1.0.0",
  description: "The public status page: component health and open incidents.",
});
const group = service.addGroup(name); // subjects <name>.component_status, <name>.open_incidents
group.addEndpoint("component_status", {
  handler: componentStatus,
  metadata: {
    description: "The current status of one component on the status page (operational, " +
      "degraded_performance, partial_outage, major_outage), its 90-day uptime and its open incident.",
    input_schema: JSON.stringify({
      type: "object",
      properties: {
        component: { type: "string", enum: Object.keys(COMPONENTS), description: "the component" },
      },
      required: ["component"],
      additionalProperties: false,
    }),
  },
});
group.addEndpoint("open_incidents", {
  handler: openIncidents,
  metadata: { description: "Every incident on the status page that is not resolved yet." },
});
await nc.flush(); // the endpoints' subscriptions have reached the server
console.log(`${name} service ready on ${url}`);

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    // answer what is in flight, bounded: the server may be gone already
    setTimeout(() => process.exit(0), 5000).unref();
    await service.stop();
    await nc.drain();
  });
}
await nc.closed();
