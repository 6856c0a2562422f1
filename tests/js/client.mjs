// A real MCP client (the official TypeScript SDK's Client + StdioClientTransport) that the
// gateway tests drive. Usage: node client.mjs PLAN.json
//
// PLAN: {"command": "...", "args": [...], "env": {...}, "cwd": "...",  (stdio) or
//        {"url": "http://127.0.0.1:PORT/mcp", "headers": {...}}          (streamable HTTP)
//        "steps": [{"op": "list"} | {"op": "call", "name": "...", "arguments": {...},
//                   "progress": true, "timeoutMs": 60000, "abortAfterMs": 500} | {"op": "info"}
//                 | {"op": "sessionId"} (the Mcp-Session-Id over HTTP)]}
// Prints one JSON line per step ({"step": i, "op": ..., "result": ...} or
// {"step": i, "op": ..., "error": {"code", "message"}}), then {"done": true}.
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// "url": the streamable HTTP transport (optional "headers", e.g. a bearer token).
const transport = plan.url
  ? new StreamableHTTPClientTransport(new URL(plan.url), {
      requestInit: { headers: plan.headers ?? {} },
    })
  : new StdioClientTransport({
      command: plan.command,
      args: plan.args ?? [],
      env: plan.env,
      cwd: plan.cwd,
      stderr: "inherit",
    });
// With "handlers": the client answers the server's sampling, roots and elicitation
// requests (server-to-client requests the gateway must relay), deterministically.
const capabilities = plan.handlers
  ? { sampling: {}, roots: { listChanged: true }, elicitation: {} }
  : {};
const client = new Client(
  { name: plan.clientName ?? "ts-test-client", version: "1.2.3" },
  { capabilities },
);
if (plan.handlers) {
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => ({
    role: "assistant",
    content: { type: "text", text: `sampled: ${request.params.messages.length} message(s)` },
    model: "test-model",
    stopReason: "endTurn",
  }));
  client.setRequestHandler(ListRootsRequestSchema, async () => ({
    roots: [{ uri: "file:///srv/project", name: "project" }],
  }));
  client.setRequestHandler(ElicitRequestSchema, async () => ({ action: "decline" }));
}
await client.connect(transport);

for (const [i, step] of (plan.steps ?? []).entries()) {
  try {
    let result;
    if (step.op === "list") {
      result = await client.listTools();
    } else if (step.op === "info") {
      result = client.getServerVersion();
    } else if (step.op === "sessionId") {
      result = { sessionId: transport.sessionId ?? null };
    } else if (step.op === "listResources") {
      result = await client.listResources();
    } else if (step.op === "readResource") {
      result = await client.readResource({ uri: step.uri });
    } else if (step.op === "listPrompts") {
      result = await client.listPrompts();
    } else if (step.op === "getPrompt") {
      result = await client.getPrompt({ name: step.name, arguments: step.arguments ?? {} });
    } else if (step.op === "ping") {
      result = await client.ping();
    } else if (step.op === "call") {
      let progress = 0;
      const options = { timeout: step.timeoutMs ?? 60000 };
      if (step.progress) {
        options.onprogress = () => {
          progress += 1;
        };
        options.resetTimeoutOnProgress = true;
      }
      if (step.abortAfterMs) {
        // The SDK sends notifications/cancelled for an aborted request.
        const controller = new AbortController();
        setTimeout(() => controller.abort("withdrawn by the test"), step.abortAfterMs);
        options.signal = controller.signal;
      }
      result = await client.callTool({ name: step.name, arguments: step.arguments ?? {} },
        undefined, options);
      if (step.progress) result = { ...result, _progressSeen: progress };
    } else {
      throw new Error(`unknown op ${step.op}`);
    }
    out({ step: i, op: step.op, result });
  } catch (e) {
    out({ step: i, op: step.op, error: { code: e.code ?? null, message: String(e.message ?? e) } });
  }
}
out({ done: true });
// Over HTTP the session ends with a DELETE (the gateway then ends its server).
if (plan.url) await transport.terminateSession();
await client.close();
