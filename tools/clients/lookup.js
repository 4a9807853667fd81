#!/usr/bin/env node
// An independent client (grpc-js + proto-loader, no Python involved): one ProvisionService.LookupResident
// call over mTLS. Prints one JSON line, {"ok":true,"record":{...}} or
// {"ok":false,"code":"...","details":"...","rich":{"reason":"...","types":[...]}} (rich: the google.rpc.Status
// of the grpc-status-details-bin trailer, decoded with protobufjs; null when the server sent none),
// and exits 0 either way; exits 2 only on bad usage or when it cannot even load the proto or the certificates.
//   node tools/clients/lookup.js --address 127.0.0.1:PORT --ca ca.pem --cert agency-pension.pem \
//     --key agency-pension.key --purpose pension-benefit --code 12345678901 --servername center.jukinet.invalid
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const names = ["address", "ca", "cert", "key", "purpose", "code", "servername"];

// The google.rpc messages of gRPC's rich error model, as much of them as this client reads.
const RICH = protobuf.parse(`syntax = "proto3"; package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }`,
  { keepCase: true }).root;

function richDetails(error) {
  const raw = error.metadata ? error.metadata.get("grpc-status-details-bin")[0] : undefined;
  if (!raw) return null;
  const status = RICH.lookupType("google.rpc.Status").decode(raw);
  const info = status.details.find((d) => d.type_url.endsWith("/google.rpc.ErrorInfo"));
  return {
    code: status.code,
    reason: info ? RICH.lookupType("google.rpc.ErrorInfo").decode(info.value).reason : null,
    types: status.details.map((d) => d.type_url.split("/").pop()),
  };
}

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
  // The node's server name (center.jukinet.invalid): verified against the certificate, as jukinet's
  // own clients do; the address alone would accept any certificate of the network.
  const client = new ProvisionService(values.address, credentials, {
    "grpc.ssl_target_name_override": values.servername,
    "grpc.default_authority": values.servername,
  });
  const request = { purpose: values.purpose, resident_code: values.code };
  client.LookupResident(request, { deadline: Date.now() + 10_000 }, (error, reply) => {
    const out = error
      ? { ok: false, code: grpc.status[error.code] ?? String(error.code), details: error.details,
          rich: richDetails(error) }
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
