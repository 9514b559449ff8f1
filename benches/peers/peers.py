"""The Python peers on agentrt's benchmark run shape (see README.md beside this file).

One run: a scripted model asks for one tool call (`echo`), the tool runs, the model answers —
every step persisted to a SQLite file by the framework's own persistence, runs one after another,
each in a fresh thread/session. Prints `BENCH peers.<framework>_runs_per_s <value> runs/s` lines.
"""

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time


def bench_langgraph(db_path: str, runs: int) -> float:
    """LangGraph: agent node -> ToolNode -> agent node, checkpointed by SqliteSaver after every
    step with durability="sync" (each checkpoint committed before the next step runs)."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    @tool
    def echo(text: str) -> str:
        """Echoes its text."""
        return text

    def agent(state: MessagesState):
        # The scripted model: one tool call, then the answer once it has seen the result.
        if isinstance(state["messages"][-1], ToolMessage):
            return {"messages": [AIMessage(content="done")]}
        call = {"name": "echo", "args": {"text": "hi"}, "id": "c1", "type": "tool_call"}
        return {"messages": [AIMessage(content="", tool_calls=[call])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([echo]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    conn = sqlite3.connect(db_path, check_same_thread=False)
    saver = SqliteSaver(conn)
    app = graph.compile(checkpointer=saver)
    # Warm up (schema creation, imports) outside the timed part, as agentrt's figure does.
    app.invoke({"messages": [HumanMessage("warm up")]},
               {"configurable": {"thread_id": "warm-up"}}, durability="sync")
    started = time.perf_counter()
    for i in range(runs):
        out = app.invoke({"messages": [HumanMessage("echo hi then answer")]},
                         {"configurable": {"thread_id": f"run-{i}"}}, durability="sync")
        assert out["messages"][-1].content == "done", out
    elapsed = time.perf_counter() - started
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    print(f"# langgraph: journal_mode={journal} synchronous={sync} (2 = FULL)")
    conn.close()
    return runs / elapsed


def bench_openai_agents(db_path: str, runs: int) -> float:
    """OpenAI Agents SDK: Runner with a scripted Model and one function tool, the conversation
    persisted by SQLiteSession (every item the run adds is written to the file)."""
    from agents import Agent, Runner, SQLiteSession, function_tool, set_tracing_disabled
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    set_tracing_disabled(True)

    @function_tool
    def echo(text: str) -> str:
        """Echoes its text."""
        return text

    class Scripted(Model):
        async def get_response(self, system_instructions, input, *args, **kwargs):
            seen_result = isinstance(input, list) and any(
                isinstance(item, dict) and item.get("type") == "function_call_output"
                for item in input
            )
            if seen_result:
                out = ResponseOutputMessage(
                    id="m1", type="message", role="assistant", status="completed",
                    content=[ResponseOutputText(type="output_text", text="done", annotations=[])],
                )
            else:
                out = ResponseFunctionToolCall(
                    id="f1", call_id="c1", type="function_call", name="echo",
                    arguments='{"text": "hi"}', status="completed",
                )
            return ModelResponse(output=[out], usage=Usage(), response_id=None)

        def stream_response(self, *args, **kwargs):
            raise NotImplementedError("the benchmark does not stream")

    agent = Agent(name="bench", instructions="Echo, then answer.", model=Scripted(),
                  tools=[echo])

    async def go() -> float:
        warm = SQLiteSession("warm-up", db_path)
        await Runner.run(agent, "warm up", session=warm)
        started = time.perf_counter()
        for i in range(runs):
            session = SQLiteSession(f"run-{i}", db_path)
            result = await Runner.run(agent, "echo hi then answer", session=session)
            assert result.final_output == "done", result.final_output
            session.close()
        elapsed = time.perf_counter() - started
        conn = sqlite3.connect(db_path)
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        print(f"# openai-agents: journal_mode={journal} synchronous={sync} (2 = FULL)")
        conn.close()
        return runs / elapsed

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, bench in [("langgraph", bench_langgraph),
                            ("openai_agents", bench_openai_agents)]:
            rate = bench(os.path.join(tmp, f"{name}.db"), args.runs)
            print(f"BENCH peers.{name}_runs_per_s {rate:.1f} runs/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
