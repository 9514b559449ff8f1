"""A small external MCP server written with the official Python SDK (MCPServer).

It is what an agent profile's `mcp_servers` entry points at in agentrt's client tests.

Usage:
  sdk_tool_server.py stdio
  sdk_tool_server.py http

Over HTTP it listens on a loopback port the kernel picks and prints one line on stdout,
`listening on http://127.0.0.1:<port>/mcp`, once uvicorn has run the app's startup (the MCP
session manager is running) and its socket accepts: the line, not the port accepting, is the
readiness signal. (Picking a port in the test and handing it over raced other servers that bound
the same released port first.)
"""

import asyncio
import os
import sys

import uvicorn

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("agentrt-test-tools")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Return the text in upper case."""
    return text.upper()


@server.tool()
def env_value(name: str) -> str:
    """Return the value of an environment variable of the server process ('' if unset)."""
    return os.environ.get(name, "")


@server.tool()
def fail(message: str) -> str:
    """Always fails with the given message."""
    raise ToolError(message)


@server.tool()
def die(code: int) -> str:
    """Ends the server process in the middle of the call (a crash, as the client sees it)."""
    sys.stdout.flush()
    os._exit(code)


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints its URL once it is ready to serve MCP."""

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"listening on http://127.0.0.1:{port}/mcp", flush=True)


def serve_http():
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    asyncio.run(AnnouncingServer(config).serve())


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        serve_http()
    else:
        server.run("stdio")
