"""Scripted agents doing realistic git work through a real MCP server.

The agents are scripted (no language model): each scenario is the sequence of tool calls a
coding agent typically makes, including the careless ones a policy exists for — resetting,
staging an ``.env`` file, checking out the default branch, pasting a key into a commit
message, committing to a release repository. A short simulated "planning" LLM span with
token usage precedes the work, as a real agent's model call would.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from opentelemetry import trace

from tooltrail import semconv as sc

HOLD_LIMIT_S: Final = 6.0
"""How long an agent of a session the demo approver decides waits on a held call before it
gives up (its request is then abandoned). The approver decides in about a second; this is a
safety net. The operator's agents wait without it, up to the rule's approval timeout."""

FEATURES: Final = (
    "retry-budget",
    "audit-log",
    "rate-limiter",
    "csv-export",
    "dark-mode",
    "healthcheck",
    "feature-flags",
    "metrics-endpoint",
)
# AWS's documented example key id: a credential shape, not a credential.
EXAMPLE_KEY: Final = "AKIAIOSFODNN7EXAMPLE"


@dataclass
class CallOutcome:
    tool: str
    is_error: bool
    text: str
    held_too_long: bool = False


@dataclass
class AgentContext:
    """What a scenario works with: its MCP client, repository and session."""

    call_tool: Callable[[str, dict[str, Any]], Awaitable[Any]]
    repo: Path
    session_id: str
    rng: random.Random
    outcomes: list[CallOutcome] = field(default_factory=list)
    hold_limit_s: float | None = HOLD_LIMIT_S

    async def call(self, tool: str, **arguments: Any) -> CallOutcome:
        arguments = {"repo_path": str(self.repo), **arguments}
        try:
            result = await asyncio.wait_for(self.call_tool(tool, arguments), self.hold_limit_s)
        except TimeoutError:
            outcome = CallOutcome(tool, True, "still waiting for approval", held_too_long=True)
        else:
            text = "".join(getattr(c, "text", "") for c in result.content)
            outcome = CallOutcome(tool, bool(result.is_error), text)
        self.outcomes.append(outcome)
        return outcome

    def write(self, rel: str, text: str) -> str:
        target = self.repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return rel


def plan_with_llm(rng: random.Random, task: str) -> None:
    """A simulated model call: one GenAI chat span with token usage."""
    from tooltrail.instrumentation import current_session

    tracer = trace.get_tracer("tooltrail.demo")
    current = current_session()
    attrs: dict[str, Any] = {
        sc.TT_SESSION_ID: current.session_id,
        sc.SESSION_ID: current.session_id,
        sc.GEN_AI_CONVERSATION_ID: current.session_id,
        sc.GEN_AI_AGENT_NAME: current.agent_name or "",
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.GEN_AI_REQUEST_MODEL: "demo-planner-1",
        sc.GEN_AI_USAGE_INPUT_TOKENS: rng.randint(800, 4000),
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: rng.randint(60, 600),
    }
    with tracer.start_as_current_span("chat demo-planner-1", attributes=attrs) as span:
        span.set_attribute("tooltrail.demo.task", task)


def _slug(ctx: AgentContext) -> str:
    return f"{ctx.rng.choice(FEATURES)}-{ctx.session_id[-6:]}"


async def inspect_repo(ctx: AgentContext) -> None:
    """A reviewer reads: status, history (asks for far too much of it), branches, diff."""
    plan_with_llm(ctx.rng, "review the repository state")
    await ctx.call("git_status")
    await ctx.call("git_log", max_count=500)  # capped by the policy: a REWRITE
    await ctx.call("git_branch", branch_type="local")
    await ctx.call("git_diff_unstaged")


async def build_feature(ctx: AgentContext) -> None:
    """A developer branches, edits, stages and commits on a feature branch."""
    plan_with_llm(ctx.rng, "implement a small feature")
    slug = _slug(ctx)
    branch = f"feature/{slug}"
    await ctx.call("git_status")
    await ctx.call("git_create_branch", branch_name=branch)
    await ctx.call("git_checkout", branch_name=branch)
    rel = ctx.write(f"src/{slug.replace('-', '_')}.py", f'"""{slug}."""\n\nENABLED = True\n')
    await ctx.call("git_add", files=[rel])
    await ctx.call("git_commit", message=f"Add {slug.rsplit('-', 1)[0].replace('-', ' ')}")
    await ctx.call("git_log", max_count=5)


async def careless_cleanup(ctx: AgentContext) -> None:
    """A janitor agent that tries what the policy is for: reset, secrets, default branch."""
    plan_with_llm(ctx.rng, "clean up the working tree")
    own = f"agent/{ctx.session_id}"
    await ctx.call("git_create_branch", branch_name=own)
    await ctx.call("git_checkout", branch_name=own)
    await ctx.call("git_reset")  # DENY: no-reset
    env = ctx.write(".env", f"AWS_ACCESS_KEY_ID={EXAMPLE_KEY}\nDEBUG=1\n")
    await ctx.call("git_add", files=[env])  # DENY: no-secrets-staged (Critical)
    (ctx.repo / env).unlink(missing_ok=True)
    await ctx.call("git_checkout", branch_name="main")  # REWRITE: stays on agent/<session>
    notes = ctx.write(f"notes/{ctx.session_id[-6:]}.md", "Rotated the deploy key.\n")
    await ctx.call("git_add", files=[notes])
    # REWRITE: the key is redacted from the message that reaches the server.
    await ctx.call("git_commit", message=f"Rotate deploy key {EXAMPLE_KEY}")


async def release_notes(ctx: AgentContext) -> None:
    """A sub-agent editing a release repository: its commit waits for a human."""
    plan_with_llm(ctx.rng, "write release notes")
    await ctx.call("git_status")
    rel = ctx.write("CHANGELOG.md", f"# Changelog\n\n- Notes by {ctx.session_id[-6:]}\n")
    await ctx.call("git_add", files=[rel])
    await ctx.call("git_commit", message="Update release notes")  # REQUIRE_APPROVAL


async def cut_release_branch(ctx: AgentContext) -> None:
    """A sub-agent cutting a release branch off main: held for the release managers."""
    plan_with_llm(ctx.rng, "cut the release branch")
    version = f"2.{ctx.rng.randint(8, 30)}.{ctx.rng.randint(0, 9)}"
    await ctx.call(
        "git_create_branch",
        branch_name=f"release/{version}-{ctx.session_id[-4:]}",
        base_branch="main",
    )


SCENARIOS: Final[dict[str, Callable[[AgentContext], Awaitable[None]]]] = {
    "inspect": inspect_repo,
    "feature": build_feature,
    "cleanup": careless_cleanup,
    "release-notes": release_notes,
    "cut-release": cut_release_branch,
}

AGENT_OF: Final = {
    "inspect": "code-reviewer",
    "feature": "feature-dev",
    "cleanup": "repo-janitor",
    "release-notes": "docs-writer",
    "cut-release": "release-engineer",
}
PARENT_AGENT: Final = "release-captain"
