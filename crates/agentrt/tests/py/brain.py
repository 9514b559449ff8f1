"""A supervisor brain for `agentrt supervise`, written with the official MCP Python SDK.

It reads AGENTRT_MCP_URL, AGENTRT_MCP_TOKEN and AGENTRT_TASK, spawns one worker of each profile
named in AGENTRT_BRAIN_PROFILES (comma-separated, default `boss`) on the task (keyed, so a resumed
run does not spawn it twice), awaits them and prints how many workers were delivered. A name
written `!name` must be refused: the refusal is printed (stdout, before the count) as `refused name: <error>`. Exits 1 (the
reason on stderr) when a call fails unexpectedly.
"""

import asyncio
import json
import os
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main() -> int:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {os.environ['AGENTRT_MCP_TOKEN']}"})
    async with http:
        transport = streamable_http_client(os.environ["AGENTRT_MCP_URL"], http_client=http)
        async with Client(transport, read_timeout_seconds=120) as client:
            names = os.environ.get("AGENTRT_BRAIN_PROFILES", "boss").split(",")
            agents = []
            for i, name in enumerate(names):
                refused = name.startswith("!")
                spawned = await client.call_tool(
                    "spawn_agent",
                    {
                        "profile": name.lstrip("!"),
                        "task": os.environ["AGENTRT_TASK"],
                        "budget": {"tokens": 2000, "turns": 2},
                        "completion_check": {"kind": "predicate", "name": "non_empty"},
                        "idempotency_key": f"brain-{i}",
                    },
                )
                if refused:
                    if not spawned.is_error:
                        raise AssertionError(f"spawn of {name} was not refused")
                    print(f"refused {name[1:]}: {spawned.content[0].text}")
                    continue
                if spawned.is_error:
                    raise AssertionError(f"spawn failed: {spawned.content}")
                agents.append((spawned.structured_content or json.loads(spawned.content[0].text))["id"])
            done = await client.call_tool("await_agent", {"ids": agents, "timeout_ms": 100000})
            if done.is_error:
                raise AssertionError(f"await failed: {done.content}")
            settled = (done.structured_content or json.loads(done.content[0].text))["settled"]
            delivered = sum(r["status"] == {"state": "settled", "delivered": True} for r in settled)
            print(f"{delivered} of {len(settled)} delivered")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except Exception as e:  # noqa: BLE001 - report anything to the parent
        print(f"brain failed: {e!r}", file=sys.stderr)
        sys.exit(1)
