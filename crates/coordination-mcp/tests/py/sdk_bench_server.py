"""The baseline for `coord.py_sdk_call_us_p50`: an MCP server written with the official Python SDK
that offers an `observe_agent` tool with the same arguments and the same kind of answer as
agentrt's coordination server (status, no new events, output, cursor, budget), served over stdio.
"""

from mcp.server.mcpserver import MCPServer

server = MCPServer("py-coordination-baseline")

AGENTS = {
    "agt-bench": {
        "status": {"state": "settled", "delivered": True},
        "output": "done: bench\n",
        "events": 4,
    }
}


@server.tool()
def observe_agent(id: str, since_cursor: int = 0) -> dict:
    """Return an agent's status, its events since a cursor and its output so far."""
    agent = AGENTS.get(id)
    if agent is None:
        raise ValueError(f"unknown agent id `{id}`")
    return {
        "id": id,
        "status": agent["status"],
        "events": [],
        "output": agent["output"],
        "next_cursor": agent["events"],
        "reserved": {"tokens": 100, "turns": 5},
        "spent": {"tokens": 10, "turns": 1},
    }


if __name__ == "__main__":
    server.run("stdio")
