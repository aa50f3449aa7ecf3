"""The chat CLI behind `python -m agent`: an interactive REPL and one-shot `ask`.

    python -m agent [--session ID] [--adapter PATH | --llm-url URL --llm-model NAME]
    python -m agent ask "How do I reset the router?" [--json]
    python -m agent guard requests.csv     # the harmful-request guard over a file

Expected errors print one line to stderr; exit codes follow `retrieval.errors`: 2 for bad usage
or input (empty question, no index, wrong model or adapter path), 1 for a failed run (model
server unreachable), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import uuid
from pathlib import Path

from agent.api import Assistant
from agent.faq import DEFAULT_FAQ_THRESHOLD
from agent.guards import run_guard_file
from agent.llm import ChatBackend, LocalChatModel, OpenAIChatModel
from agent.state import AgentAnswer
from retrieval.errors import CasewiseError, ModelNotFoundError, UsageError, run_cli
from retrieval.settings import Settings

HELP = """\
Commands:
  /sources   show the passages the last answer used
  /history   show this session's conversation
  /new       start a new session (forget the conversation)
  /help      show this help
  Ctrl-C     stop the current answer (the session stays)
  Ctrl-D     exit (the session is saved; resume it with --session ID)"""


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # On the subcommand the defaults are suppressed so that flags given before the subcommand
    # (`python -m agent --home X ask ...`) are not overwritten by the subparser's defaults.
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = parser.add_argument_group("index and model")
    g.add_argument("--home", default=d(None), help="index directory (default: CASEWISE_HOME or "
                   "./.casewise)")
    g.add_argument("--model", default=d("default"), help="local base model: 'default' "
                   "(embedded SmolLM2-135M-Instruct), a model directory or a hub id")
    g.add_argument("--adapter", default=d(None), metavar="PATH",
                   help="LoRA adapter directory (from `python -m finetune train`)")
    g.add_argument("--llm-url", default=d(None), metavar="URL", help="OpenAI-compatible server "
                   "(vLLM, llama.cpp, Ollama), e.g. http://localhost:8000/v1; replaces the "
                   "local model")
    g.add_argument("--llm-model", default=d(None), metavar="NAME",
                   help="model name on that server (required with --llm-url)")
    g.add_argument("--session", default=d(None), metavar="ID",
                   help="conversation id; reuse it to continue a saved conversation")
    g.add_argument("--top-k", type=int, default=d(5), help="passages retrieved per search "
                   "(default 5)")
    g.add_argument("--max-new-tokens", type=int, default=d(256),
                   help="cap on generated tokens per answer (default 256)")
    g.add_argument("--faq-threshold", type=float, default=d(None), metavar="SCORE",
                   help="minimum match score to show a similar past ticket (default "
                   f"{DEFAULT_FAQ_THRESHOLD}; lower shows more matches)")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m agent` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="Ask the support assistant. Without a subcommand: interactive chat.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="{chat,ask,guard}")
    chat = sub.add_parser("chat", help="interactive chat (the default)", epilog=HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(chat, suppress=True)
    ask = sub.add_parser("ask", help="answer one question and exit")
    ask.add_argument("question", help="the question (quote it)")
    ask.add_argument("--json", action="store_true",
                     help="print one JSON object: answer, reasoning, citations, abstained, "
                     "refused, faq_match, timings (and question, contexts)")
    _add_common(ask, suppress=True)
    guard = sub.add_parser(
        "guard", help="check a file of requests with the harmful-request guard",
        description="Run the harmful-request guard (rules, then the classifier) over a file: "
        "one JSON line per request on stdout (question, harmful, category, layer, score, line), "
        "a summary on stderr. No index or model is needed.",
        epilog="input: text (one request per line), CSV with a 'question' or 'goal' column, or "
        "JSONL with a 'question' field\n\nexamples:\n  python -m agent guard tickets.csv\n"
        "  python -m agent guard requests.txt > verdicts.jsonl\n"
        "  python -m agent guard questions.jsonl | grep '\"harmful\": true'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    guard.add_argument("file", type=Path, help="the requests (.txt, .csv or .jsonl)")
    return parser


def make_llm(args: argparse.Namespace) -> ChatBackend:
    """The chat backend the flags describe.

    Raises:
        UsageError: Contradictory backend flags.
    """
    if args.top_k < 1:
        raise UsageError(f"--top-k ({args.top_k}) must be at least 1")
    if args.llm_url:
        if args.adapter:
            raise UsageError("--adapter applies to the local model; with --llm-url load the "
                             "adapter on the server (e.g. vLLM --lora-modules) and pass its name "
                             "as --llm-model")
        if not args.llm_model:
            raise UsageError("--llm-url needs --llm-model NAME (the model name the server serves)")
        return OpenAIChatModel(args.llm_url, args.llm_model)
    if args.llm_model:
        raise UsageError("--llm-model needs --llm-url; for a local model use --model")
    if args.adapter and not Path(args.adapter).expanduser().is_dir():
        raise ModelNotFoundError(
            f"adapter path {args.adapter} does not exist or is not a directory: pass the output "
            f"directory of `python -m finetune train` (it holds adapter_config.json)"
        )
    return LocalChatModel(args.model, adapter=args.adapter, max_new_tokens=args.max_new_tokens)


def build_assistant(args: argparse.Namespace) -> Assistant:
    """Open the index, prepare the model (loading a local one now) and build the assistant.

    Raises:
        CasewiseError: No index, wrong model/adapter path, contradictory flags.
    """
    llm = make_llm(args)
    settings = Settings.resolve(home=args.home)
    assistant = Assistant.from_settings(settings, llm, top_k=args.top_k,
                                        faq_threshold=args.faq_threshold,
                                        max_new_tokens=args.max_new_tokens)
    if isinstance(llm, LocalChatModel):
        # Load now so that a wrong model or adapter path fails before the first question.
        llm.load()
    return assistant


def format_sources(answer: AgentAnswer) -> str:
    """One line listing the citations of an answer."""
    if not answer.citations:
        return "Sources: none"
    labels = []
    for c in answer.citations:
        label = f"[{c.label()}]"
        labels.append(f"{label} {c.section}" if c.section else label)
    return "Sources: " + "; ".join(labels)


def format_faq(answer: AgentAnswer) -> str | None:
    """The FAQ match block shown beside an answer, or `None`."""
    m = answer.faq_match
    if m is None:
        return None
    resolution = textwrap.shorten(m.answer, 240, placeholder=" ...")
    return (f"Similar past ticket ({m.reason}):\n  Q: {m.question}\n"
            f"  A: {resolution}")


def format_passages(answer: AgentAnswer) -> str:
    """The passages the last answer used, for `/sources`."""
    if not answer.contexts:
        return "No passages were used for the last answer."
    blocks = []
    for i, hit in enumerate(answer.contexts, start=1):
        head = f"[{i}] [{hit.citation.label()}]"
        if hit.citation.section:
            head += f" {hit.citation.section}"
        if hit.similarity is not None:
            head += f" (similarity {hit.similarity:.2f})"
        blocks.append(head + "\n" + textwrap.indent(textwrap.fill(hit.text.strip(), 96), "    "))
    return "\n".join(blocks)


def _print_result(answer: AgentAnswer, streamed: bool, out) -> None:
    if not streamed or answer.abstained or answer.refused:
        print(("\n" if streamed else "") + answer.answer, file=out)
    else:
        print(file=out)
    if not answer.refused:
        print(format_sources(answer), file=out)
    faq = format_faq(answer)
    if faq:
        print(faq, file=out)


def run_ask(args: argparse.Namespace) -> int:
    """`python -m agent ask`: answer one question, print it (or JSON), exit."""
    if not args.question.strip():
        raise UsageError("the question is empty: python -m agent ask \"How do I ...?\"")
    assistant = build_assistant(args)
    try:
        answer = assistant.ask(args.question, thread_id=args.session)
    finally:
        assistant.close()
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
    else:
        print(answer.answer)
        if not answer.refused:
            print(format_sources(answer))
        faq = format_faq(answer)
        if faq:
            print(faq)
    return 0


def run_chat(args: argparse.Namespace, stdin=None, out=None) -> int:
    """`python -m agent`: the interactive REPL."""
    out = out or sys.stdout
    session = args.session or f"s-{uuid.uuid4().hex[:8]}"
    print("casewise: loading the index and the model ...", file=out, flush=True)
    assistant = build_assistant(args)
    print(f"Session {session} (resume with --session {session}). Ask a question; /help for "
          f"commands, Ctrl-D to exit.", file=out, flush=True)
    last: AgentAnswer | None = None
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=out)
                return 0
            except KeyboardInterrupt:
                print("\n(Ctrl-D to exit)", file=out, flush=True)
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                command = line.split()[0].lower()
                if command == "/help":
                    print(HELP, file=out)
                elif command == "/sources":
                    print(format_passages(last) if last else "No answer yet.", file=out)
                elif command == "/history":
                    turns = assistant.history(session)
                    for m in turns:
                        print(f"{m['role']}: {m['content']}", file=out)
                    if not turns:
                        print("No conversation yet in this session.", file=out)
                elif command == "/new":
                    session = f"s-{uuid.uuid4().hex[:8]}"
                    last = None
                    print(f"New session {session}.", file=out)
                elif command in ("/quit", "/exit"):
                    return 0
                else:
                    print(f"Unknown command {command}; /help lists the commands.", file=out)
                out.flush()
                continue
            streamed = False
            stream = assistant.stream(line, thread_id=session)
            try:
                while True:
                    piece = next(stream)
                    streamed = True
                    print(piece, end="", file=out, flush=True)
            except StopIteration as done:
                last = done.value
                _print_result(last, streamed, out)
            except KeyboardInterrupt:
                stream.close()
                print("\n[stopped]", file=out)
            except CasewiseError as e:
                print(f"\nerror: {e}", file=sys.stderr)
            out.flush()
    finally:
        assistant.close()


def quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, optional-kernel warnings) off the terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("bitsandbytes", "transformers", "sentence_transformers", "chromadb"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already (in-process callers): switch it off too
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m agent`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    # No subcommand means chat; top-level flags may come before a subcommand.
    commands = ("ask", "chat", "guard")
    if not any(a in commands for a in argv) and argv[:1] not in (["-h"], ["--help"]):
        argv = ["chat", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "guard":
        return run_cli(lambda: run_guard_file(args.file))
    return run_cli(lambda: run_ask(args) if args.command == "ask" else run_chat(args))
