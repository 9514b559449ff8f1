"""The official MCP Python SDK as the supervisor of `agentrt serve` (launched over stdio).

Usage:
  serve_client.py <agentrt-binary> serve <args...>   # launch `agentrt serve --stdio`
  serve_client.py --http <url> <token>               # connect to `agentrt serve --http`

Spawns one worker on a task (with an idempotency key, twice: the second is a duplicate), awaits
it, and prints one JSON line: the spawn answers and the settled result. Exits 1 with the failure
on stderr when a call fails.
"""

import asyncio
import json
import sys

from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def structured(result):
    if result.is_error:
        raise AssertionError(f"tool call failed: {result.content}")
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def exercise(client: Client) -> dict:
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
    return {"first": first, "again": again, "awaited": awaited}


async def main(argv: list[str]) -> int:
    if argv[1] == "--http":
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {argv[3]}"})
        async with http:
            transport = streamable_http_client(argv[2], http_client=http)
            async with Client(transport, read_timeout_seconds=120) as client:
                seen = await exercise(client)
    else:
        target = StdioServerParameters(command=argv[1], args=argv[2:])
        async with Client(target, read_timeout_seconds=120) as client:
            seen = await exercise(client)
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))
