"""`recstack`: a terminal client for the gateway, with per-stage timing breakdowns.

recstack recommend --history N1,N2,N3 -k 10 [--category sports] [--diversity 0.3]
recstack search "brexit negotiations" -k 5
recstack ask "who won the election?"
recstack feedback <impression id from recommend> --click N2   (shown, N2 clicked; no --click: nothing clicked)
recstack health
Behind TLS and tokens: recstack --tls --ca-cert ca.pem search "…" (token from $RECSTACK_TOKEN or --token).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from contract import channel
from recstack.v1 import gateway_pb2 as pb
from recstack.v1 import gateway_pb2_grpc as pb_grpc
from server.config import LLMSettings, RagSettings
from server.health import ANSWER_SERVICE, CACHE_SERVICE, SERVICE

console = Console()


def filters(args: argparse.Namespace) -> pb.Filters | None:
    if not args.category and args.after is None:
        return None
    after = Timestamp(seconds=args.after) if args.after is not None else None
    return pb.Filters(categories=args.category or [], published_after=after)


def timings_table(timings: Iterable[pb.StageTiming], total_ms: float) -> Table:
    table = Table(title="where the time went", show_header=True, header_style="bold magenta")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    table.add_column("", justify="left")
    timings = list(timings)
    for timing in timings:
        bar = "█" * max(1, round(30 * timing.ms / total_ms)) if total_ms else ""
        table.add_row(timing.stage, f"{timing.ms:.2f}", f"[cyan]{bar}")
    overhead = total_ms - sum(t.ms for t in timings)
    table.add_row("[dim]network + gateway", f"[dim]{overhead:.2f}", "")
    table.add_row("[bold]total (client)", f"[bold]{total_ms:.2f}", "")
    return table


def cmd_recommend(stub: pb_grpc.GatewayStub, args: argparse.Namespace) -> None:
    history = [pb.HistoryItem(id=item) for item in args.history.split(",") if item] if args.history else []
    history += [pb.HistoryItem(title=title) for title in args.title or []]
    request = pb.RecommendRequest(
        user_id=args.user, history=history, k=args.k, filters=filters(args), diversity=args.diversity
    )
    started = time.perf_counter()
    response = stub.Recommend(request, timeout=args.timeout)
    total_ms = (time.perf_counter() - started) * 1000
    title = "cold start: popular and recent" if response.cold_start else f"for {args.user or 'you'}"
    table = Table(title=f"{len(response.items)} recommendations {title} ({response.history_used} clicks used)")
    for column in ("#", "score", "category", "title", "id"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for rank, item in enumerate(response.items, start=1):
        table.add_row(str(rank), f"{item.score:.3f}", f"[green]{item.category}", item.title, f"[dim]{item.id}")
    console.print(table)
    console.print(timings_table(response.timings, total_ms))
    if response.impression_id:
        console.print(f"impression [cyan]{response.impression_id}[/cyan] (recstack feedback … --click ID)")


def cmd_feedback(stub: pb_grpc.GatewayStub, args: argparse.Namespace) -> None:
    event = pb.FeedbackEvent(impression_id=args.impression_id, clicked_item_ids=args.click or [])
    response = stub.LogFeedback(pb.LogFeedbackRequest(events=[event]), timeout=args.timeout)
    console.print(f"logged {response.impressions_logged} impression(s), {response.clicks_logged} click(s)")


def cmd_search(stub: pb_grpc.GatewayStub, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    response = stub.Search(pb.SearchRequest(query=args.query, k=args.k, filters=filters(args)), timeout=args.timeout)
    total_ms = (time.perf_counter() - started) * 1000
    table = Table(title=f"passages for “{args.query}”", show_lines=True)
    for column in ("#", "score", "category", "passage"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for rank, passage in enumerate(response.passages, start=1):
        text = f"[bold]{passage.title}[/bold]\n{passage.text[:300]}{'…' if len(passage.text) > 300 else ''}"
        table.add_row(str(rank), f"{passage.score:.3f}", f"[green]{passage.category}", text)
    console.print(table)
    console.print(timings_table(response.timings, total_ms))


def cmd_ask(stub: pb_grpc.GatewayStub, args: argparse.Namespace) -> None:
    request = pb.AnswerRequest(
        question=args.question,
        k=args.k,
        filters=filters(args),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
    )
    console.print(f"[bold]Q:[/bold] {args.question}")
    for chunk in stub.Answer(request, timeout=args.timeout):
        kind = chunk.WhichOneof("chunk")
        if kind == "sources":
            print_sources(chunk.sources)
            console.print("[bold]A:[/bold] ", end="")
        elif kind == "token":
            console.print(chunk.token, end="", markup=False, highlight=False)
        else:
            console.print()
            print_done(chunk.done)


def print_sources(sources: pb.AnswerSources) -> None:
    table = Table(title="sources" + ("" if sources.grounded else " (none relevant enough)"))
    for column in ("id", "score", "title"):
        table.add_column(column)
    for passage in sources.passages:
        table.add_row(f"[cyan]{passage.id}", f"{passage.score:.3f}", passage.title)
    console.print(table)


def print_done(done: pb.AnswerDone) -> None:
    console.print(
        f"[dim]finish={finish_reason_name(done.finish_reason)} tokens={done.completion_tokens} "
        f"retrieval={done.retrieval_ms:.1f} ms  first token={done.time_to_first_token_ms:.0f} ms  "
        f"{done.tokens_per_second:.1f} tokens/s  total={done.total_ms:.0f} ms"
    )


def finish_reason_name(reason: int) -> str:
    """FINISH_REASON_NO_SOURCES -> "no_sources"."""
    name: str = pb.FinishReason.Name(reason)
    return name.removeprefix("FINISH_REASON_").lower()


def cmd_health(channel: grpc.Channel, args: argparse.Namespace) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE, ANSWER_SERVICE, CACHE_SERVICE):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=args.timeout)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        colour = "green" if status == "SERVING" else "red"
        console.print(f"{service or '(server)':32} [{colour}]{status}")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="recstack", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    root.add_argument("--target", default="127.0.0.1:50051", help="gateway address (%(default)s)")
    root.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds (%(default)s)")
    channel.add_arguments(root)
    commands = root.add_subparsers(dest="command", required=True)

    def with_filters(
        command: argparse.ArgumentParser, k_default: int | None = 10, k_help: str = "results (%(default)s)"
    ) -> argparse.ArgumentParser:
        command.add_argument("-k", type=int, default=k_default, help=k_help)
        command.add_argument("--category", action="append", help="keep only this category (repeatable)")
        command.add_argument("--after", type=int, help="keep only items published after this unix time")
        return command

    recommend = with_filters(commands.add_parser("recommend", help="news for a click history"))
    recommend.add_argument("--user", default="", help="user id")
    recommend.add_argument("--history", help="clicked news ids, comma separated, oldest first")
    recommend.add_argument("--title", action="append", help="a clicked title the catalog does not know")
    recommend.add_argument("--diversity", type=float, default=0.0, help="0..1 (%(default)s)")
    search = with_filters(commands.add_parser("search", help="passages for a query"))
    search.add_argument("query", help="the text to find passages for")
    ask = with_filters(
        commands.add_parser("ask", help="a streamed answer grounded in retrieved passages"),
        k_default=None,
        k_help=f"passages to retrieve (default: the server's, {RagSettings().default_k} unless configured)",
    )
    ask.add_argument("question", help="the question to answer from the passages")
    llm_defaults = LLMSettings()
    ask.add_argument(
        "--max-tokens",
        type=int,
        help=f"most tokens to generate (default: the server's, {llm_defaults.default_max_tokens} unless configured)",
    )
    ask.add_argument(
        "--temperature",
        type=float,
        help=f"sampling temperature, 0 = greedy (default: the server's, {llm_defaults.default_temperature} "
        "unless configured)",
    )
    feedback = commands.add_parser("feedback", help="log what the user did with a recommend answer")
    feedback.add_argument("impression_id", help="the impression id recommend printed")
    feedback.add_argument("--click", action="append", help="a clicked item id among those shown (repeatable)")
    commands.add_parser("health", help="the gateway's health per service")
    return root


STUB_COMMANDS = {"recommend": cmd_recommend, "search": cmd_search, "ask": cmd_ask, "feedback": cmd_feedback}


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    security = channel.from_arguments(cli, args)
    with security.channel(args.target) as gateway_channel:
        try:
            if args.command == "health":
                cmd_health(gateway_channel, args)
            else:
                STUB_COMMANDS[args.command](pb_grpc.GatewayStub(gateway_channel), args)
        except grpc.RpcError as error:
            console.print(f"[red]{error.code().name}[/red]: {error.details()}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
