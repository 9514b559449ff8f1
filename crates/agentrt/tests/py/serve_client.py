"""The official MCP Python SDK as the supervisor of `agentrt serve` (launched over stdio).

Usage: serve_client.py <agentrt-binary> serve <args...>

Spawns one worker on a task (with an idempotency key, twice: the second is a duplicate), awaits
it, and prints one JSON line: the spawn answers and the settled result. Exits 1 with the failure
on stderr when a call fails.
"""

import asyncio
import json
import sys

from mcp import Client, StdioServerParameters


def structured(result):
    if result.is_error:
        raise AssertionError(f"tool call failed: {result.content}")
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def main(argv: list[str]) -> int:
    target = StdioServerParameters(command=argv[1], args=argv[2:])
    async with Client(target, read_timeout_seconds=120) as client:
        spawn = {
            "profile": "boss",
            "task": "Say hello in one short sentence.",
            "budget": {"tokens": 2000, "turns": 2},
            "completion_check": {"kind": "predicate", "name": "non_empty"},
            "idempotency_key": "serve-test-1",
        }
        first = structured(await client.call_tool("spawn_agent", spawn))
        again = structured(await client.call_tool("spawn_agent", spawn))
        awaited = structured(
            await client.call_tool("await_agent", {"ids": [first["id"]], "timeout_ms": 100000})
        )
    print(json.dumps({"first": first, "again": again, "awaited": awaited}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))
