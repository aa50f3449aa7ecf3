"""The chat CLI behind `python -m agent`: an interactive REPL and one-shot `ask`.

    python -m agent [--session ID] [--adapter PATH | --llm-url URL --llm-model NAME]
    python -m agent ask "How do I reset the router?" [--json]
    python -m agent serve [--host 127.0.0.1] [--port 8080] [--api-keys FILE]   (agent/serve.py)
    python -m agent feedback export FILE.jsonl
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
import queue
import signal
import sys
import textwrap
import threading
import uuid
from pathlib import Path

from agent.api import Assistant, reset_memory
from agent.context import Cancelled
from agent.faq import DEFAULT_FAQ_THRESHOLD
from agent.guards import run_guard_file
from agent.llm import (
    BACKENDS,
    ENV_BACKEND,
    ChatBackend,
    LlamaCppChatModel,
    LocalChatModel,
    OpenAIChatModel,
    local_backend,
)
from agent.prompts import MODEL_CHECK_MAX_NEW_TOKENS
from agent.state import AgentAnswer
from finetune.format import adapter_format_warning
from retrieval.errors import CasewiseError, ModelNotFoundError, UsageError, at_least, run_cli
from retrieval.grounding import REPEATED
from retrieval.settings import Settings
from retrieval.text import sentences

HELP = """\
Commands:
  /sources   show the passages the last answer used, supporting sentences marked
  /history   show this session's conversation
  /new       start a new session (forget the conversation)
  /help      show this help
  Ctrl-C     stop the current answer (the session stays)
  Ctrl-D     exit (the session is saved; resume it with --session ID)"""


EXAMPLES = """\
examples:
  python -m agent                                        # chat over ./.casewise
  python -m agent --session ticket-42                    # resume a saved conversation
  python -m agent ask "How do I reset the router?"
  python -m agent ask "How do I reset the router?" --json --adapter runs/smollm2-faq
  python -m agent --llm-url http://localhost:8000/v1 --llm-model meta-llama/Llama-3.1-8B-Instruct
  python -m agent ask "..." --chroma-url http://chroma.internal:8000
  python -m agent serve --help                           # the REST service"""


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # On the subcommand the defaults are suppressed so that flags given before the subcommand
    # (`python -m agent --home X ask ...`) are not overwritten by the subparser's defaults.
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = parser.add_argument_group("index and model")
    g.add_argument("--home", default=d(None), help="index directory (default: CASEWISE_HOME or "
                   "./.casewise)")
    g.add_argument("--chroma-url", default=d(None), metavar="URL",
                   help="Chroma server holding the index, e.g. http://localhost:8000 (default "
                   "CASEWISE_CHROMA_URL, else the embedded store under --home)")
    g.add_argument("--model", default=d("default"), help="local base model: 'default' "
                   "(embedded SmolLM2-135M-Instruct), a model directory or a hub id")
    g.add_argument("--adapter", default=d(None), metavar="PATH",
                   help="LoRA adapter directory (from `python -m finetune train`)")
    g.add_argument("--backend", default=d(None), choices=BACKENDS,
                   help="local inference engine: 'auto' (default; llama.cpp when installed, "
                   f"else transformers), 'llama.cpp' or 'transformers'; also {ENV_BACKEND}")
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
    g.add_argument("--model-check", action="store_true", default=d(False),
                   help="after the word-level checks, ask the model whether each kept sentence's "
                   "passage states it, and remove what it does not confirm (one short call per "
                   "sentence; for a capable or remote model, not the embedded 135M one)")
    g.add_argument("--model-check-tokens", type=int, default=d(MODEL_CHECK_MAX_NEW_TOKENS),
                   metavar="N", help="tokens each --model-check reply may take (default "
                   f"{MODEL_CHECK_MAX_NEW_TOKENS}, enough for yes/no; a model that thinks first "
                   "needs a few hundred)")
    g.add_argument("--reset-memory", action="store_true", default=d(False),
                   help="move the conversation memory (<home>/memory.sqlite) aside, kept as "
                   "memory.sqlite.<time>.bak, and start a fresh one (e.g. when it is damaged)")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m agent` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="Ask the support assistant. Without a subcommand: interactive chat.",
        epilog=HELP + "\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="{chat,ask,serve,feedback,guard}")
    chat = sub.add_parser("chat", help="interactive chat (the default)", epilog=HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(chat, suppress=True)
    ask = sub.add_parser("ask", help="answer one question and exit", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ask.add_argument("question", help="the question (quote it)")
    ask.add_argument("--json", action="store_true",
                     help="print one JSON object: answer, mode (generated, quoted, abstained, "
                     "refused), claims and removed_claims (each sentence with its supporting "
                     "passage, or why it was removed), citations, reasoning, raw model output, "
                     "faq_match, timings, contexts")
    _add_common(ask, suppress=True)
    _add_serve_parsers(sub)
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


SERVE_EXAMPLES = """\
examples:
  python -m agent serve                                  # http://127.0.0.1:8080, docs at /docs
  python -m agent serve --api-keys keys.txt --new-key zendesk   # print a new key, store its hash
  python -m agent serve --host 0.0.0.0 --api-keys keys.txt --adapter runs/smollm2-faq
  CASEWISE_API_KEYS=secret python -m agent serve --host 0.0.0.0 --workers 2
  curl -s localhost:8080/v1/ask -H 'Content-Type: application/json' \\
       -d '{"question": "How do I reset the router?", "session_id": "ticket-42"}'

Without API keys the server listens on loopback addresses only. docs/serve.md: every endpoint."""

FEEDBACK_EXAMPLES = """\
examples:
  python -m agent feedback export feedback.jsonl
  python -m finetune data --faq feedback.jsonl --out data/feedback     # train on corrections
  python -m eval run --questions feedback.jsonl --systems base --out reports/feedback

Corrected answers (any rating) and answers rated up become rows; answers rated down without a
correction, and approved abstentions or refusals, are counted and left out."""


def _add_serve_parsers(sub) -> None:
    """The `serve` and `feedback export` subcommands (implemented in agent/serve.py and
    agent/feedback.py)."""
    fmt = argparse.RawDescriptionHelpFormatter
    serve = sub.add_parser("serve", help="run the REST service for help desks and CRMs",
                           description="Serve ask, streamed ask, sessions, feedback and an "
                           "OpenAI-compatible endpoint over HTTP (FastAPI on uvicorn).",
                           epilog=SERVE_EXAMPLES, formatter_class=fmt)
    s = serve.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; others need API keys)")
    s.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes, each loading its own model (default 1)")
    s.add_argument("--api-keys", metavar="FILE", default=None,
                   help="file of API key hashes ('NAME sha256:HEX' lines); keys may also come "
                   "from CASEWISE_API_KEYS (comma-separated)")
    s.add_argument("--new-key", metavar="NAME", default=None,
                   help="create an API key named NAME, append its hash to --api-keys FILE, "
                   "print the key once and exit")
    s.add_argument("--rate-limit", type=int, default=120, metavar="N",
                   help="requests per minute per API key (default 120; 0: no limit)")
    s.add_argument("--max-body-bytes", type=int, default=64 * 1024, metavar="N",
                   help="largest request body (default 65536)")
    s.add_argument("--max-question-chars", type=int, default=4000, metavar="N",
                   help="longest question or corrected answer (default 4000)")
    s.add_argument("--max-pending", type=int, default=32, metavar="N",
                   help="questions in flight before new ones get 503 (default 32)")
    _add_common(serve, suppress=True)

    feedback = sub.add_parser("feedback", help="export the feedback given through the server")
    actions = feedback.add_subparsers(dest="feedback_command", metavar="{export}", required=True)
    export = actions.add_parser(
        "export", help="write the feedback as FAQ-history JSONL (for finetune data and eval)",
        description="Write ratings and corrected answers stored by `python -m agent serve` "
        "(<home>/feedback.sqlite) as FAQ-history JSONL.", epilog=FEEDBACK_EXAMPLES,
        formatter_class=fmt)
    export.add_argument("file", metavar="FILE.jsonl", help="the JSONL file to write")
    export.add_argument("--home", default=argparse.SUPPRESS,
                        help="index directory (default: CASEWISE_HOME or ./.casewise)")


def run_feedback_export(args: argparse.Namespace) -> int:
    """`python -m agent feedback export FILE.jsonl`: write the stored feedback, print a summary."""
    from agent.feedback import FEEDBACK_FILE, FeedbackStore

    path = Settings.resolve(home=args.home).home / FEEDBACK_FILE
    if not path.is_file():
        raise UsageError(f"no feedback store at {path}: feedback is stored by `python -m agent "
                         f"serve` (POST /v1/feedback); check --home")
    store = FeedbackStore(path)
    try:
        summary = store.export(Path(args.file))
    finally:
        store.close()
    print(summary)
    return 0


def make_llm(args: argparse.Namespace) -> ChatBackend:
    """The chat backend the flags describe.

    Raises:
        UsageError: Contradictory backend flags.
    """
    at_least("--top-k", args.top_k)
    if args.llm_url:
        if args.adapter:
            raise UsageError("--adapter applies to the local model; with --llm-url load the "
                             "adapter on the server (e.g. vLLM --lora-modules) and pass its name "
                             "as --llm-model")
        if args.backend:
            raise UsageError("--backend chooses the local inference engine; with --llm-url the "
                             "server does the inference")
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
    return local_backend(args.model, adapter=args.adapter, max_new_tokens=args.max_new_tokens,
                         backend=args.backend)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """The settings the flags name (`--home`, `--chroma-url`), over the environment's."""
    return Settings.resolve(home=args.home, chroma_url=args.chroma_url)


def apply_reset_memory(args: argparse.Namespace, settings: Settings) -> None:
    """`--reset-memory`: move the memory file aside (once: the flag is cleared) and say where."""
    if args.reset_memory:
        kept = reset_memory(settings.memory_path)
        if kept:
            print(f"casewise: conversation memory moved aside to {kept}; starting a fresh one",
                  file=sys.stderr)
        args.reset_memory = False


def build_assistant(args: argparse.Namespace, llm: ChatBackend | None = None) -> Assistant:
    """Open the index, prepare the model (loading a local one now) and build the assistant.

    Args:
        args: Parsed flags.
        llm: The chat backend to use instead of the one the flags describe (the server wraps
            it for concurrent requests).

    Raises:
        CasewiseError: No index, wrong model/adapter path, contradictory flags, a damaged
            memory file (without `--reset-memory`).
    """
    llm = llm or make_llm(args)
    if args.adapter:
        warning = adapter_format_warning(args.adapter)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    settings = resolve_settings(args)
    apply_reset_memory(args, settings)
    assistant = Assistant.from_settings(settings, llm, top_k=args.top_k,
                                        faq_threshold=args.faq_threshold,
                                        max_new_tokens=args.max_new_tokens,
                                        model_check=args.model_check,
                                        model_check_tokens=args.model_check_tokens)
    if isinstance(llm, (LocalChatModel, LlamaCppChatModel)):
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


def format_mode(answer: AgentAnswer) -> str | None:
    """One line saying how the answer was produced and checked, or `None` for a refusal."""
    removed = len(answer.removed_claims)
    repeated = sum(c.reason == REPEATED for c in answer.removed_claims)
    unsupported = removed - repeated
    parts = [f"{n} {kind}" for n, kind in ((unsupported, "unsupported"), (repeated, "repeated"))
             if n]
    dropped = (f"; {' and '.join(parts)} sentence{'s' * (removed != 1)} removed"
               if removed else "")
    if answer.mode == "generated":
        n = sum(not c.quoted for c in answer.claims)
        quote = (", then the documentation's own words quoted"
                 if any(c.quoted for c in answer.claims) else "")
        return (f"[generated: {n} sentence{'s' * (n != 1)}, each checked against its "
                f"passage{quote}{dropped}]")
    if answer.mode == "quoted":
        why = "no generated sentence could be verified" if removed else \
            "the documentation's own words"
        return f"[quoted verbatim from the documentation: {why}]"
    if answer.mode == "abstained":
        return "[abstained: the documentation does not cover this]"
    return None


def format_faq(answer: AgentAnswer) -> str | None:
    """The FAQ match block shown beside an answer, or `None`."""
    m = answer.faq_match
    if m is None:
        return None
    resolution = textwrap.shorten(m.answer, 240, placeholder=" ...")
    return (f"Similar past ticket ({m.reason}):\n  Q: {m.question}\n"
            f"  A: {resolution}")


def highlight(text: str, spans: list[str], tty: bool) -> str:
    """`text` with each of `spans` marked: bold on a terminal, `**...**` elsewhere."""
    start, end = ("\033[1;33m", "\033[0m") if tty else ("**", "**")
    for span in sorted(set(spans), key=len, reverse=True):
        if span and span in text and f"{start}{span}" not in text:
            text = text.replace(span, f"{start}{span}{end}", 1)
    return text


def format_passages(answer: AgentAnswer, tty: bool = False) -> str:
    """The passages the last answer used, for `/sources`, with the supporting sentences marked."""
    if not answer.contexts:
        return "No passages were used for the last answer."
    blocks = []
    for i, hit in enumerate(answer.contexts, start=1):
        head = f"[{i}] [{hit.citation.label()}]"
        if hit.citation.section:
            head += f" {hit.citation.section}"
        if hit.similarity is not None:
            head += f" (similarity {hit.similarity:.2f})"
        supports = [n for n, c in enumerate(answer.claims, start=1) if c.passage == i]
        if supports:
            head += " supports sentence" + "s" * (len(supports) > 1) + " " + ", ".join(
                str(n) for n in supports)
        evidence = [s for c in answer.claims if c.passage == i for s in sentences(c.evidence)]
        body = highlight(" ".join(hit.text.split()), evidence, tty)
        blocks.append(head + "\n" + textwrap.indent(textwrap.fill(body, 96), "    "))
    return "\n".join(blocks)


def _print_result(answer: AgentAnswer, streamed: bool, out) -> None:
    if not streamed:
        print(answer.answer, file=out)
    else:
        print(file=out)
    mode = format_mode(answer)
    if mode:
        print(mode, file=out)
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
        _print_result(answer, streamed=False, out=sys.stdout)
    return 0


def interruptible() -> None:
    """Make Ctrl-C raise `KeyboardInterrupt` even where the parent process ignored SIGINT.

    Python keeps SIGINT ignored when it starts with it ignored, which is how a background job of
    a non-interactive shell (`make test &`, CI runners, some launchers) starts: the REPL would
    then echo ^C and go on answering. Only the main thread may set a handler.
    """
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_chat(args: argparse.Namespace, stdin=None, out=None) -> int:
    """`python -m agent`: the interactive REPL."""
    out = out or sys.stdout
    interruptible()
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
                    print(format_passages(last, tty=out.isatty()) if last else "No answer yet.",
                          file=out)
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
            try:
                last = answer_interruptibly(assistant, line, session, out) or last
            except CasewiseError as e:
                print(f"\nerror: {e}", file=sys.stderr)
            out.flush()
    finally:
        assistant.close()


def _start_with_sigint_held(thread: threading.Thread) -> None:
    """Start `thread` with SIGINT blocked, so that Ctrl-C arrives once it is running.

    An interrupt inside `Thread.start()` (it waits for the thread to run) would leave a running
    thread that `is_alive()` does not report, never cancelled nor joined: the REPL then exited
    under it and crashed (SIGSEGV) in SQLite during interpreter shutdown. The thread inherits
    the mask, so SIGINT also always reaches the main thread, never a worker.
    """
    block = getattr(signal, "pthread_sigmask", None)  # POSIX
    if block is None:
        thread.start()
        return
    held = block(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        thread.start()
    finally:
        block(signal.SIG_SETMASK, held)  # a Ctrl-C pressed meanwhile is raised now


def answer_interruptibly(assistant: Assistant, question: str, session: str,
                         out) -> AgentAnswer | None:
    """Stream one answer to `out`; Ctrl-C stops it (prints "[stopped]", returns `None`).

    The answer runs in a worker thread and this (main) thread only waits on its queue, so the
    `KeyboardInterrupt` of Ctrl-C lands here, never inside LangGraph's thread pool, SQLite or the
    model: raised there, it once interrupted the pool while starting a thread, left that thread
    unjoined, and the REPL then hung on exit. Here it sets the run's cancel event, and the
    worker stops before its next generated token (`Context.cancel`); this waits for it, so the
    next question never shares the model with a stopped one.

    Raises:
        CasewiseError: The run's error (another exception is raised as it is).
    """
    cancel = threading.Event()
    pieces: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            stream = assistant.stream(question, thread_id=session, cancel=cancel)
            while True:
                pieces.put(("piece", next(stream)))
        except StopIteration as done:
            pieces.put(("done", done.value))
        except Cancelled:
            pieces.put(("stopped", None))
        except BaseException as e:  # noqa: BLE001 - raised again in the main thread
            pieces.put(("error", e))

    worker = threading.Thread(target=work, name="casewise-answer", daemon=True)
    streamed = False
    try:  # from here on, Ctrl-C stops this answer, not the REPL
        # The answer appears once verified (nothing the model writes is shown unchecked).
        print("(searching the documents and checking the answer ...)", file=out, flush=True)
        _start_with_sigint_held(worker)
        while True:
            kind, value = pieces.get()
            if kind == "piece":
                streamed = True
                print(value, end="", file=out, flush=True)
            elif kind == "done":
                _print_result(value, streamed, out)
                return value
            elif kind == "stopped":
                break
            else:
                raise value
    except KeyboardInterrupt:
        cancel.set()
        while worker.is_alive():
            try:
                worker.join()
            except KeyboardInterrupt:  # pressed again: it is already stopping
                pass
        # Drop what the worker left: an exception there would keep the run's frames (the
        # model among them) alive in a reference cycle through this queue until exit.
        while not pieces.empty():
            pieces.get_nowait()
    print("\n[stopped]", file=out)
    return None


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
    if not any(a in ("ask", "chat", "serve", "feedback", "guard") for a in argv) and \
            argv[:1] not in (["-h"], ["--help"]):
        argv = ["chat", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)

    def run_serve(args: argparse.Namespace) -> int:
        from agent.serve import run_serve as serve  # imports FastAPI: only when serving

        return serve(args)

    commands = {"ask": run_ask, "chat": run_chat, "serve": run_serve,
                "feedback": run_feedback_export, "guard": lambda a: run_guard_file(a.file)}
    return run_cli(lambda: commands[args.command](args))
