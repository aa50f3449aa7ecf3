"""Help-desk exports as ticket history: one conversation in, one question/answer pair out.

Three formats (examples written for this repository in `samples/exports/`, described in
`docs/ingest.md`):

- **Zendesk** ticket export JSON: tickets with `id`, `subject`, `status`, `requester_id` and
  `comments` (`author_id`, `body` or `plain_body`, `public`), either as one document
  (`{"tickets": [...]}` or a list of tickets) or as newline-delimited JSON, one ticket a line
  (the shape of Zendesk's full JSON export).
- **Freshdesk** ticket CSV: one row per conversation entry with the ticket's `Ticket ID` and
  the entry's `Body`, `Incoming` (true when the customer wrote it) and `Private` (true for an
  internal note), optionally `Subject` and `Status`; the names are those of Freshdesk's
  ticket and conversation fields. Rows of one ticket are in conversation order.
- **Conversation JSONL**: one ticket a line, either a list of messages `[{"role", "text"}]` or
  an object `{"id", "status", "messages": [...]}`; roles `customer`/`user` and
  `agent`/`assistant`, and `note`/`internal` (or `"internal": true`) for internal notes.

In every format the first customer message is the question and the resolving reply is the last
public agent reply; internal notes are dropped. A ticket whose status says it is not solved, or
that has no customer message or no public agent reply, is skipped with its reason. Personal data
is redacted later, by the caller (`ingest.redact`), the same way for every format.

The functions here take records already parsed (the readers in `ingest.loaders` own decoding,
line numbers and problem reports) and raise `SkipRecord` with the reason a record is unusable.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

# Statuses that mean "not solved yet" in Zendesk (new/open/pending/hold), Freshdesk (Open,
# Pending, or their API codes 2 and 3) and the conversation format; anything else, or no status
# at all, counts as solved.
UNSOLVED = frozenset({"new", "open", "pending", "hold", "on-hold", "2", "3"})
CUSTOMER_ROLES = frozenset({"customer", "user", "requester", "end-user", "end_user"})
AGENT_ROLES = frozenset({"agent", "assistant", "support"})
NOTE_ROLES = frozenset({"note", "internal", "internal_note", "private"})
_TRUE = frozenset({"true", "yes", "1", "y"})
_FALSE = frozenset({"false", "no", "0", "n", ""})
_HTML_TAG = re.compile(r"<\s*/?\s*(p|br|div|span|a|b|i|u|em|strong|ul|ol|li|table|tr|td|h\d)\b",
                       re.I)


class SkipRecord(Exception):
    """A record that cannot become a question/answer pair; `str(e)` is the reason."""


@dataclass(frozen=True)
class Ticket:
    """A solved conversation reduced to what the history keeps.

    Attributes:
        question: The customer's first message.
        answer: The last public agent reply.
        id: The ticket id, when the export has one.
        extra: Scalars worth keeping (`subject`, `status`, `format`).
    """

    question: str
    answer: str
    id: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """One message of a conversation: who wrote it, its text, and whether it is public."""

    author: str  # "customer" or "agent"
    text: str
    public: bool = True


def resolve(messages: list[Message], status: object, ticket_id: str | None, fmt: str,
            subject: object = None) -> Ticket:
    """Reduce a conversation to its question and its resolving reply.

    Args:
        messages: The conversation in order.
        status: The ticket status (`None` when the export has none).
        ticket_id: The ticket id for the result.
        fmt: Export format name, kept in `extra["format"]`.
        subject: The ticket subject, kept in `extra["subject"]`.

    Returns:
        The ticket's question and answer.

    Raises:
        SkipRecord: Not solved, no customer message, or no public agent reply.
    """
    state = str(status).strip().lower() if status not in (None, "") else None
    if state in UNSOLVED:
        raise SkipRecord(f"status {status!r} (not solved); ticket skipped")
    public = [m for m in messages if m.public and m.text.strip()]
    question = next((m.text for m in public if m.author == "customer"), None)
    if question is None:
        raise SkipRecord("no public customer message; ticket skipped")
    answer = next((m.text for m in reversed(public) if m.author == "agent"), None)
    if answer is None:
        raise SkipRecord("no public agent reply; ticket skipped")
    extra = {"format": fmt}
    if isinstance(subject, str) and subject.strip():
        extra["subject"] = subject.strip()
    if state:
        extra["status"] = state
    return Ticket(question.strip(), answer.strip(), ticket_id, extra)


def record_id(value: object) -> str | None:
    """An id as text (`12.0` from a spreadsheet is `12`), or `None` when there is none."""
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _named(parse):
    """Prefix a record's skip reason with its ticket id, when it has one."""
    @functools.wraps(parse)
    def wrapper(obj: object) -> Ticket:
        try:
            return parse(obj)
        except SkipRecord as e:
            ticket_id = record_id(obj.get("id")) if isinstance(obj, dict) else None
            raise SkipRecord(f"ticket {ticket_id}: {e}" if ticket_id else str(e)) from None
    return wrapper


# --- Zendesk -------------------------------------------------------------------------------------

def is_zendesk_ticket(obj: object) -> bool:
    """Whether a parsed JSON value looks like a Zendesk ticket (an object with `comments`)."""
    return isinstance(obj, dict) and "comments" in obj


def zendesk_tickets(document: object) -> list[object] | None:
    """The ticket list of a Zendesk JSON document (`{"tickets": [...]}` or `[...]`), else `None`."""
    if isinstance(document, dict) and isinstance(document.get("tickets"), list):
        return document["tickets"]
    if isinstance(document, list) and document and all(is_zendesk_ticket(t) for t in document
                                                        if isinstance(t, dict)):
        return document
    return None


@_named
def zendesk_ticket(obj: object) -> Ticket:
    """One Zendesk ticket: comments by the requester are the customer's, public others the agents'.

    Raises:
        SkipRecord: Not a ticket object, comments missing or malformed, or not resolvable.
    """
    if not isinstance(obj, dict):
        raise SkipRecord(f"expected a ticket object, got {type(obj).__name__}; skipped")
    comments = obj.get("comments")
    if not isinstance(comments, list):
        raise SkipRecord("ticket has no 'comments' list; skipped")
    requester = obj.get("requester_id")
    if requester is None:
        raise SkipRecord("ticket has no 'requester_id' (who is the customer?); skipped")
    messages = []
    for n, comment in enumerate(comments, start=1):
        if not isinstance(comment, dict):
            raise SkipRecord(f"comment {n} is not an object; ticket skipped")
        text = comment.get("plain_body", comment.get("body"))
        if not isinstance(text, str):
            raise SkipRecord(f"comment {n} has no text ('body' or 'plain_body'); ticket skipped")
        author = "customer" if comment.get("author_id") == requester else "agent"
        messages.append(Message(author, plain_text(text), comment.get("public", True) is not False))
    return resolve(messages, obj.get("status"), record_id(obj.get("id")), "zendesk",
                   obj.get("subject"))



# --- Freshdesk -----------------------------------------------------------------------------------

FRESHDESK_COLUMNS = ("ticket id", "body", "incoming")


def is_freshdesk(columns: list[str]) -> bool:
    """Whether a CSV header (lower-cased) is a Freshdesk conversation export."""
    return all(c in columns for c in FRESHDESK_COLUMNS)


def _flag(value: object, column: str) -> bool:
    text = str(value if value is not None else "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SkipRecord(f"{column} {value!r} is not true/false; ticket skipped")


def freshdesk_tickets(rows: list[tuple[int, dict]]) -> list[tuple[int, Ticket | SkipRecord]]:
    """Group Freshdesk CSV rows by ticket and resolve each ticket.

    Args:
        rows: `(line, row)` with lower-cased column names, in file order.

    Returns:
        Per ticket, in order of first appearance: the line of its first row and the ticket, or
        the `SkipRecord` saying why it was skipped (a bad row skips its whole ticket: its other
        messages alone could pair the question with the wrong reply).
    """
    grouped: dict[str, list[tuple[int, dict]]] = {}
    out: list[tuple[int, Ticket | SkipRecord]] = []
    for line, row in rows:
        ticket_id = record_id(row.get("ticket id"))
        if ticket_id is None:
            out.append((line, SkipRecord("empty Ticket ID; row skipped")))
            continue
        grouped.setdefault(ticket_id, []).append((line, row))
    for ticket_id, ticket_rows in grouped.items():
        first = ticket_rows[0][0]
        try:
            messages = [
                Message("customer" if _flag(row.get("incoming"), "Incoming") else "agent",
                        plain_text(str(row.get("body") or "")),
                        not _flag(row.get("private"), "Private"))
                for _, row in ticket_rows
            ]
            status = next((r.get("status") for _, r in reversed(ticket_rows) if r.get("status")),
                          None)
            subject = next((r.get("subject") for _, r in ticket_rows if r.get("subject")), None)
            out.append((first, resolve(messages, status, ticket_id, "freshdesk", subject)))
        except SkipRecord as e:
            out.append((first, SkipRecord(f"ticket {ticket_id}: {e}")))
    out.sort(key=lambda item: item[0])
    return out


# --- generic conversation JSONL ------------------------------------------------------------------

def is_conversation(obj: object) -> bool:
    """Whether a parsed JSONL value is a conversation (a message list or `{"messages": [...]}`)."""
    return isinstance(obj, list) or (isinstance(obj, dict) and "messages" in obj)


@_named
def conversation(obj: object) -> Ticket:
    """One conversation record: `[{role, text}]` or `{id, status, subject, messages}`.

    Raises:
        SkipRecord: Not a message list, a message without role or text, an unknown role, or not
            resolvable.
    """
    ticket_id = status = subject = None
    if isinstance(obj, dict):
        ticket_id, status = record_id(obj.get("id")), obj.get("status")
        subject = obj.get("subject")
        obj = obj.get("messages")
    if not isinstance(obj, list):
        raise SkipRecord("'messages' is not a list; skipped")
    messages = []
    for n, message in enumerate(obj, start=1):
        if not isinstance(message, dict):
            raise SkipRecord(f"message {n} is not an object; skipped")
        role, text = str(message.get("role") or "").strip().lower(), message.get("text")
        if not isinstance(text, str):
            raise SkipRecord(f"message {n} has no 'text'; skipped")
        if role in NOTE_ROLES or message.get("internal") is True or message.get("public") is False:
            continue
        if role not in CUSTOMER_ROLES | AGENT_ROLES:
            raise SkipRecord(
                f"message {n} has role {message.get('role')!r} (expected customer, agent or "
                "note); skipped")
        messages.append(Message("customer" if role in CUSTOMER_ROLES else "agent",
                                plain_text(text)))
    return resolve(messages, status, ticket_id, "conversation", subject)



# --- text ----------------------------------------------------------------------------------------

class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment, with line breaks for block elements."""

    BLOCKS = frozenset({"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def plain_text(text: str) -> str:
    """Message text without HTML markup (help desks export rich-text replies as HTML).

    Text that does not look like HTML is returned as it is, so `a < b` in a plain reply survives.
    """
    if not _HTML_TAG.search(text):
        return text.strip()
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)
