// Parse every message of a JSONL file ({"subject", "data"} per line) with quicktype's converters:
// node check_types.js <compiled types.js> <converters.json: tag -> converter name> <messages.jsonl>
// Prints {"checked": n, "failures": [...]} and exits 1 when any message fails.
"use strict";
const fs = require("node:fs");

const [typesPath, convertersPath, messagesPath] = process.argv.slice(2);
const { Convert } = require(typesPath);
const converters = JSON.parse(fs.readFileSync(convertersPath, "utf8"));
const failures = [];
let checked = 0;
for (const line of fs.readFileSync(messagesPath, "utf8").split("\n")) {
  if (!line.trim()) continue;
  const { subject, data } = JSON.parse(line);
  const name = converters[data.type];
  checked += 1;
  try {
    if (name === undefined) throw new Error(`no type in the schema has tag ${JSON.stringify(data.type)}`);
    const parsed = Convert[`to${name}`](JSON.stringify(data));
    if (parsed.type !== data.type) throw new Error(`parsed as ${parsed.type}`);
  } catch (error) {
    failures.push({ subject, type: data.type, error: String(error.message || error).slice(0, 300) });
  }
}
process.stdout.write(JSON.stringify({ checked, failures }) + "\n");
process.exit(failures.length ? 1 : 0);
