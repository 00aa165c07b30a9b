// Parse an AsyncAPI document with the official parser; print its diagnostics as JSON, exit 1 on errors.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(process.argv[2], "utf8"));
const errors = diagnostics.filter((d) => d.severity === 0); // DiagnosticSeverity.Error
const summary = {
  errors: errors.map((d) => ({ code: d.code, message: d.message, path: d.path.join("/") })),
  warnings: diagnostics.length - errors.length,
  channels: document ? document.channels().all().map((c) => c.address()) : [],
  operations: document ? document.operations().all().length : 0,
};
process.stdout.write(JSON.stringify(summary) + "\n");
process.exit(errors.length || !document ? 1 : 0);
