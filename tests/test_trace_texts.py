"""What the activity trace reads as an LLM step's prompt and output, from the attribute
names each instrumentation records them under (landed as the `attributes` JSON)."""

from __future__ import annotations

import json

from tooltrail.analytics.trace import prompt_and_output


def test_genai_semconv_messages_and_system_instructions() -> None:
    attrs = {
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "be brief"}]),
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]
        ),
        "gen_ai.output.messages": json.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [
                        {"type": "text", "content": "calling"},
                        {"type": "tool_call", "name": "git_status"},
                    ],
                }
            ]
        ),
    }
    prompt, output = prompt_and_output(json.dumps(attrs))
    assert prompt == "system: be brief\nuser: hi"
    assert output == "assistant: calling\n[tool call git_status]"


def test_openllmetry_indexed_prompts_in_index_order() -> None:
    attrs = {
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": "second",
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "first",
        "gen_ai.prompt.10.role": "user",
        "gen_ai.prompt.10.content": "eleventh",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "done",
    }
    assert prompt_and_output(json.dumps(attrs)) == (
        "system: first\nuser: second\nuser: eleventh",
        "assistant: done",
    )


def test_openinference_messages_and_values() -> None:
    attrs = {
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": "question",
        "output.value": "answer",
    }
    assert prompt_and_output(json.dumps(attrs)) == ("user: question", "answer")


def test_nothing_recorded_and_unreadable_attributes() -> None:
    assert prompt_and_output(json.dumps({"gen_ai.request.model": "gpt-4o"})) == (None, None)
    assert prompt_and_output("not json") == (None, None)
    assert prompt_and_output(None) == (None, None)
