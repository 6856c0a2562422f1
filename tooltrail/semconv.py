"""Span attribute names: the contract between instrumentation and the normalizer (SPEC §2).

Standard OpenTelemetry GenAI / MCP semantic-convention names come first, then the names
other instrumentations use (OpenInference, OpenLLMetry) that the normalizer also reads,
then tooltrail's own ``tooltrail.*`` names. Every module uses these constants; no attribute
name is spelled out anywhere else.
"""

from __future__ import annotations

from typing import Final

# --- OTel GenAI semantic conventions -------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"

# gen_ai.operation.name values
OP_EXECUTE_TOOL: Final = "execute_tool"
OP_INVOKE_AGENT: Final = "invoke_agent"
OP_CREATE_AGENT: Final = "create_agent"
LLM_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content", "embeddings"})

# --- MCP / JSON-RPC semantic conventions ----------------------------------------------
MCP_METHOD_NAME: Final = "mcp.method.name"
MCP_SESSION_ID: Final = "mcp.session.id"
MCP_METHOD_TOOLS_CALL: Final = "tools/call"
# Not (yet) in semconv: the name the MCP server announced in its initialize result.
MCP_SERVER_NAME: Final = "mcp.server.name"
JSONRPC_REQUEST_ID: Final = "jsonrpc.request.id"

# --- general ---------------------------------------------------------------------------
SESSION_ID: Final = "session.id"
ERROR_TYPE: Final = "error.type"
SERVICE_NAME: Final = "service.name"  # resource attribute
ERROR_TYPE_TOOL_ERROR: Final = "tool_error"
# Exception events (OTel exceptions semconv): their type names the error when no error.type.
EXCEPTION_EVENT: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"

# --- OpenInference ---------------------------------------------------------------------
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
OI_TOOL_NAME: Final = "tool.name"
OI_INPUT_VALUE: Final = "input.value"
OI_OUTPUT_VALUE: Final = "output.value"
OI_TOOL_PARAMETERS: Final = "tool.parameters"
OI_LLM_MODEL_NAME: Final = "llm.model_name"
OI_LLM_TOKEN_PROMPT: Final = "llm.token_count.prompt"
OI_LLM_TOKEN_COMPLETION: Final = "llm.token_count.completion"
OI_USER_ID: Final = "user.id"

# --- OpenLLMetry (Traceloop) -----------------------------------------------------------
TRACELOOP_SPAN_KIND: Final = "traceloop.span.kind"
TRACELOOP_ENTITY_NAME: Final = "traceloop.entity.name"
TRACELOOP_ENTITY_INPUT: Final = "traceloop.entity.input"
TRACELOOP_ENTITY_OUTPUT: Final = "traceloop.entity.output"
TRACELOOP_SESSION_ID: Final = "traceloop.association.properties.session_id"
TRACELOOP_WORKFLOW_NAME: Final = "traceloop.workflow.name"
LLM_USAGE_PROMPT_TOKENS: Final = "llm.usage.prompt_tokens"
LLM_USAGE_COMPLETION_TOKENS: Final = "llm.usage.completion_tokens"
GEN_AI_USAGE_PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"
GEN_AI_USAGE_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"

# --- tooltrail's own -------------------------------------------------------------------
TT_SESSION_ID: Final = "tooltrail.session.id"
TT_PARENT_SESSION_ID: Final = "tooltrail.parent_session.id"
TT_DECISION: Final = "tooltrail.decision"
TT_POLICY_RULE: Final = "tooltrail.policy.rule"
TT_POLICY_MATCHED: Final = "tooltrail.policy.matched"
TT_POLICY_VERSION: Final = "tooltrail.policy.version"
TT_POLICY_REASON: Final = "tooltrail.policy.reason"
TT_ENFORCED: Final = "tooltrail.enforced"
TT_BLAST_RADIUS: Final = "tooltrail.blast_radius"
TT_TARGET_REPO: Final = "tooltrail.target.repo"
TT_TARGET_BRANCH: Final = "tooltrail.target.branch"
TT_TARGET_PATH: Final = "tooltrail.target.path"
TT_ARGUMENTS_REWRITTEN: Final = "tooltrail.arguments.rewritten"
TT_ACTION_SUMMARY: Final = "tooltrail.action.summary"
TT_SEQUENCE: Final = "tooltrail.sequence"
TT_APPROVAL_ID: Final = "tooltrail.approval.id"
TT_APPROVAL_STATUS: Final = "tooltrail.approval.status"
TT_APPROVAL_DECIDED_BY: Final = "tooltrail.approval.decided_by"
TT_APPROVAL_WAIT_MS: Final = "tooltrail.approval.wait_ms"
TT_TRIGGER: Final = "tooltrail.trigger"
# MCP ToolAnnotations of the called tool as a JSON object string (readOnlyHint,
# destructiveHint, ...), so decisions that depend on them can be replayed from landed data.
TT_TOOL_ANNOTATIONS: Final = "tooltrail.tool.annotations"
# How many argument values the policy redacted before the arguments were recorded (added to
# the landed `redactions` column), so a replay knows the landed text is not the original.
TT_REDACTIONS: Final = "tooltrail.redactions"

# Set by the MCP gateway (`tooltrail proxy`, gateway/connection.py) on every span it
# makes: the call was governed from outside the agent's process. The client's own name
# and version come from MCP's `initialize` (clientInfo); what the server calls itself
# (serverInfo.name) is recorded, never trusted as its name; a tool whose definition
# differs from its pinned one carries the flag and the hash it has now.
TT_GATEWAY: Final = "tooltrail.gateway"
TT_MCP_CLIENT_NAME: Final = "tooltrail.mcp.client.name"
TT_MCP_CLIENT_VERSION: Final = "tooltrail.mcp.client.version"
TT_SERVER_REPORTED: Final = "tooltrail.mcp.server.reported_name"
TT_TOOL_DEFINITION_CHANGED: Final = "tooltrail.tool.definition_changed"
TT_TOOL_DEFINITION_HASH: Final = "tooltrail.tool.definition_hash"
# Values of the landed `governed_by` column: who made the span and enforced its decision.
GOVERNED_BY_GATEWAY: Final = "gateway"
GOVERNED_BY_INSTRUMENTATION: Final = "instrumentation"

# Provenance (issue 17). The collector stamps every request's resources with who sent it,
# overwriting whatever the sender put there: ``agent:<name>`` for an agent's credential,
# ``otlp`` for anyone else (no access control, or the shared --token). The landed
# ``source`` column: that value, or ``exporter`` (landed in-process by an instrumented
# agent or the gateway) or ``ingest`` (`tooltrail ingest`).
TT_COLLECTOR_SENDER: Final = "tooltrail.collector.sender"
SOURCE_EXPORTER: Final = "exporter"
SOURCE_INGEST: Final = "ingest"
SOURCE_OTLP: Final = "otlp"
SOURCE_AGENT_PREFIX: Final = "agent:"
# ``agent:<sender>/session-of:<holder>``: sent with <sender>'s credential into a session
# <holder> holds (its decisions land claimed). Names never hold a '/'.
SOURCE_SESSION_OF: Final = "/session-of:"

TRIGGERS: Final = ("manual", "api", "schedule", "event", "agent")

# --- how a session ends (docs/DATA.md, "Session end") -------------------------------------
# Session tags: a list of strings on any span (tooltrail's tool spans carry the tags of
# ``tt.session(tags=[...])``); the session's `tags` are the union over its spans.
TT_TAGS: Final = "tooltrail.tags"
# On every tool span of a session whose producer records its end (``tt.session``, the
# gateway): a session marked so that never lands an end record was abandoned.
TT_SESSION_ENDS: Final = "tooltrail.session.ends"
# The session-end record: a span of this name carrying the outcome (completed / failed),
# who recorded the end (session / gateway) and why, and the session's final output.
SESSION_END_NAME: Final = "tooltrail.session.end"
TT_SESSION_OUTCOME: Final = "tooltrail.session.outcome"
TT_SESSION_END_SOURCE: Final = "tooltrail.session.end_source"
TT_SESSION_END_REASON: Final = "tooltrail.session.end_reason"
TT_SESSION_OUTPUT: Final = "tooltrail.session.output"
SESSION_OUTCOMES: Final = ("completed", "failed")

# --- the count of spans that could not land whole (docs/DATA.md, "Dropped spans") -------
# One row of this name per session (the agent's span processor, for a queue drop) or per
# batch (the exporter, for spans it set aside), so a thinner record is visible in the data.
DROPPED_SPANS_NAME: Final = "tooltrail.dropped_spans"
DROPPED_TOOL_SPANS: Final = "tooltrail.dropped.tool_spans"
DROPPED_OTHER_SPANS: Final = "tooltrail.dropped.other_spans"

# --- values of tooltrail.decision / tooltrail.blast_radius ------------------------------
# Here rather than in tooltrail.schema (which loads pyarrow) so that the agent side shares
# the one definition.
DECISIONS: Final = ("ALLOW", "DENY", "REWRITE", "REQUIRE_APPROVAL")
# Ordered weakest to strongest; the index is the rank used by max_blast_radius.
BLAST_RADII: Final = ("Low", "Medium", "High", "Critical")

# --- values of tooltrail.policy.rule that no policy rule may take ------------------------
# Verdicts session control records for the calls it refuses (a policy rule named like one
# would make its own decisions read as session control's).
VERDICT_SESSION_CANCELED: Final = "session-canceled"
VERDICT_SESSION_CONTROL_ERROR: Final = "session-control-error"

# --- what the instrumentation appends to a value it had to cut ------------------------------
TRUNCATION_MARK: Final = "…[truncated]"
