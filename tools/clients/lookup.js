#!/usr/bin/env node
// An independent client (grpc-js + proto-loader, no Python involved): one ProvisionService.LookupResident
// call over mTLS. Prints one JSON line, {"ok":true,"record":{...}} or {"ok":false,"code":"...","details":"..."},
// and exits 0 either way; exits 2 only on bad usage or when it cannot even load the proto or the certificates.
//   node tools/clients/lookup.js --address 127.0.0.1:PORT --ca ca.pem --cert agency-pension.pem \
//     --key agency-pension.key --purpose pension-benefit --code 12345678901
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const names = ["address", "ca", "cert", "key", "purpose", "code"];

function main() {
  const { values } = parseArgs({ options: Object.fromEntries(names.map((n) => [n, { type: "string" }])) });
  const missing = names.filter((n) => values[n] === undefined);
  if (missing.length) throw new Error(`missing ${missing.map((n) => `--${n}`).join(" ")}`);
  // google/protobuf/*.proto imports resolve to protobufjs's bundled well-known types.
  const definition = protoLoader.loadSync("jukinet/wire/v1/provision.proto", {
    includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: true,
  });
  const { ProvisionService } = grpc.loadPackageDefinition(definition).jukinet.wire.v1;
  const credentials = grpc.credentials.createSsl(
    fs.readFileSync(values.ca), fs.readFileSync(values.key), fs.readFileSync(values.cert));
  const client = new ProvisionService(values.address, credentials);
  const request = { purpose: values.purpose, resident_code: values.code };
  client.LookupResident(request, { deadline: Date.now() + 10_000 }, (error, reply) => {
    const out = error
      ? { ok: false, code: grpc.status[error.code] ?? String(error.code), details: error.details }
      : { ok: true, record: reply.record };
    process.stdout.write(JSON.stringify(out) + "\n");
    client.close();
  });
}

try {
  main();
} catch (error) {
  process.stderr.write(`lookup.js: ${error.message}\n`);
  process.exit(2);
}
