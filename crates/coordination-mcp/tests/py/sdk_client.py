"""The official MCP Python SDK as a CLIENT of agentrt's coordination server.

Usage:
  sdk_client.py stdio <server-binary> [args...]    # launch the server over stdio
  sdk_client.py http <url> <token>                  # connect over streamable HTTP

Lists the tools, spawns a scripted worker, observes it, steers it (twice with the same
operation id), awaits it and checks the outcome. Prints one JSON line with what it saw and exits
0 when every expectation held; otherwise prints the failure to stderr and exits 1.
"""

import asyncio
import json
import sys

import jsonschema
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

EXPECTED_TOOLS = {"spawn_agent", "observe_agent", "steer_agent", "await_agent", "stop_agent"}


def structured(result):
    if result.is_error:
        raise AssertionError(f"tool call failed: {result.content}")
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def exercise(client: Client) -> dict:
    tools = await client.list_tools()
    names = {t.name for t in tools.tools}
    assert EXPECTED_TOOLS <= names, f"missing tools: {EXPECTED_TOOLS - names}"
    for tool in tools.tools:
        if tool.name in EXPECTED_TOOLS:
            assert tool.description, f"{tool.name} has no description"
            assert tool.input_schema.get("type") == "object", tool.input_schema

    # What a client that reads only the schema learns about spawn_agent's targets (jsonschema is
    # the validator the SDK itself depends on).
    spawn_schema = next(t.input_schema for t in tools.tools if t.name == "spawn_agent")
    validator = jsonschema.Draft202012Validator(spawn_schema)
    spawn_targets = {
        case: validator.is_valid({"task": "t", **args})
        for case, args in {
            "neither": {},
            "profile": {"profile": "demo"},
            "subagent": {"subagent": "helper"},
            "both": {"profile": "demo", "subagent": "helper"},
            "empty_profile": {"profile": ""},
        }.items()
    }

    spawned = structured(
        await client.call_tool(
            "spawn_agent",
            {
                "profile": "demo",
                "task": "count sheep #turns=8 #delay_ms=150",
                "budget": {"turns": 10, "tokens": 1000},
                "completion_check": {"kind": "output_contains", "text": "steered: faster"},
                "idempotency_key": "py-spawn-1",
            },
        )
    )
    agent = spawned["id"]
    again = structured(
        await client.call_tool(
            "spawn_agent",
            {
                "profile": "demo",
                "task": "count sheep #turns=8 #delay_ms=150",
                "budget": {"turns": 10, "tokens": 1000},
                "completion_check": {"kind": "output_contains", "text": "steered: faster"},
                "idempotency_key": "py-spawn-1",
            },
        )
    )
    assert again["id"] == agent and again["deduplicated"] is True, again

    first = structured(await client.call_tool("observe_agent", {"id": agent, "since_cursor": 0}))
    assert first["status"]["state"] == "running", first
    assert first["events"][0]["kind"] == "started", first

    ack1 = structured(
        await client.call_tool("steer_agent", {"id": agent, "message": "faster", "operation_id": "op-1"})
    )
    ack2 = structured(
        await client.call_tool("steer_agent", {"id": agent, "message": "faster", "operation_id": "op-1"})
    )
    assert ack1["duplicate"] is False and ack2["duplicate"] is True, (ack1, ack2)

    awaited = structured(await client.call_tool("await_agent", {"ids": [agent], "timeout_ms": 30000}))
    assert awaited["timed_out"] is False and awaited["pending"] == [], awaited
    result = awaited["settled"][0]
    assert result["status"] == {"state": "settled", "delivered": True}, result
    assert result["output"].count("steered: faster") == 1, result["output"]
    assert result["check"]["passed"] is True, result

    later = structured(
        await client.call_tool("observe_agent", {"id": agent, "since_cursor": first["next_cursor"]})
    )
    assert all(e["seq"] >= first["next_cursor"] for e in later["events"]), later
    assert later["events"][-1]["kind"] == "settled", later

    unknown = await client.call_tool("observe_agent", {"id": "agt-nope"})
    assert unknown.is_error, unknown

    stopped = structured(await client.call_tool("stop_agent", {"id": agent, "reason": "done"}))
    assert stopped["already_terminal"] is True, stopped
    return {
        "tools": sorted(names),
        "agent": agent,
        "events": len(later["events"]) + first["next_cursor"],
        "output_lines": result["output"].count("\n"),
        "spent": result["spent"],
        "protocol_version": client.protocol_version,
        "spawn_targets": spawn_targets,
    }


async def main(argv: list[str]) -> int:
    mode = argv[1]
    if mode == "stdio":
        target = StdioServerParameters(command=argv[2], args=argv[3:])
        async with Client(target, read_timeout_seconds=60) as client:
            summary = await exercise(client)
    elif mode == "http":
        url, token = argv[2], argv[3]
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http:
            async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=60) as client:
                summary = await exercise(client)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))
