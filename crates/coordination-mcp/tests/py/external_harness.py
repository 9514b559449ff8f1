"""An external supervisor harness, written with the official MCP Python SDK.

`supervise` starts this as the brain of a profile whose harness is not `router`: it reads
AGENTRT_MCP_URL and AGENTRT_MCP_TOKEN (our coordination server over streamable HTTP) and
AGENTRT_TASK, spawns two scripted workers through the verbs, awaits them, and prints its answer
on stdout. It exits 1 (with the reason on stderr) when anything is off.
"""

import asyncio
import json
import os
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def structured(result):
    if result.is_error:
        raise AssertionError(f"tool call failed: {result.content}")
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def main() -> int:
    url = os.environ["AGENTRT_MCP_URL"]
    token = os.environ["AGENTRT_MCP_TOKEN"]
    task = os.environ["AGENTRT_TASK"]
    assert "spawn_agent" in os.environ.get("AGENTRT_SUPERVISOR_INSTRUCTIONS", ""), "no instructions"
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=60) as client:
            ids = []
            for i, check in enumerate(["done:", "never in the output"]):
                spawned = structured(
                    await client.call_tool(
                        "spawn_agent",
                        {
                            "profile": "writer",
                            "task": f"{task} part {i} #turns=2 #delay_ms=10",
                            "budget": {"turns": 3, "tokens": 100},
                            "completion_check": {"kind": "output_contains", "text": check},
                            "idempotency_key": f"external-{i}",
                        },
                    )
                )
                ids.append(spawned["id"])
            done = structured(await client.call_tool("await_agent", {"ids": ids, "timeout_ms": 20000}))
            delivered = [r["id"] for r in done["settled"] if r["status"] == {"state": "settled", "delivered": True}]
            print(f"external harness: {len(delivered)} of {len(ids)} delivered")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except Exception as e:  # noqa: BLE001 - report anything to the parent
        print(f"external harness failed: {e!r}", file=sys.stderr)
        sys.exit(1)
