"""Scripted customer conversations: the JSONL format, its reader, per-turn and per-conversation metrics.

One conversation per line:

    {"id": "conv-wifi-followup", "title": "Wi-Fi, then a follow-up on the error it shows",
     "behaviours": ["follow-up"],
     "turns": [
       {"user": "How do I connect my TV to the wireless network?", "page": 21},
       {"user": "and if it says IP auto setting failed?", "page": 23, "follow_up": true},
       {"user": "How much does the TV weigh?", "answerable": false}
     ]}

Turn fields: `user` (what the customer types, required), `page` (gold page of the answer;
an integer, or a list of acceptable pages), `source` (gold file, default any), `answerable`
(default true: false when the manual does not answer it, so the right reply is to abstain),
`follow_up` (the turn only makes sense with the earlier ones: "and the other one?"),
`correction` (the customer corrects the previous question: the gold page is the corrected
topic's), `kind` (free label: typo, vague, compound, angry, ...). Unknown fields are kept.
Conversation fields: `id` (unique within the run, together with question ids), `turns`
(at least one), optional `title`, `behaviours` and anything else (kept).

Per turn (pooled over all turns of a system):

- `turn_correct_rate`: the turn went as it should: an answerable turn was answered (generated
  or quoted) citing the gold page (within 1) when one is given; an uncovered turn was not
  answered.
- `turn_cited_page_rate` (answerable turns with a gold page): answered citing the gold page.
- `turn_abstained_uncovered_rate` (uncovered turns): abstained or refused rather than answered.
- `turn_false_abstention_rate` (answerable turns): abstained.
- `turn_over_refusal_rate` (every turn: none of them is harmful): refused.
- `follow_up_resolved_rate` (follow-up and correction turns with a gold page): the gold page
  (within 1) is among the passages retrieved for the turn, or cited by it: the turn was
  understood in the light of the earlier ones, whatever the model then wrote.

Per conversation: `conversation_success_rate`: every turn correct.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eval.metrics import Score, answer_mode, answered, cited_pages, near_page
from eval.questions import read_items

CONVERSATION_SET = "conversations"
_TURN_KNOWN = ("user", "page", "source", "answerable", "follow_up", "correction", "kind")
_CONV_KNOWN = ("id", "turns", "title", "behaviours")


@dataclass(frozen=True)
class Turn:
    """One customer turn and what a good reply to it is.

    Attributes:
        user: What the customer types.
        pages: Acceptable gold pages (empty: no page is checked).
        source: Gold file name, or `None` for any.
        answerable: False when the manual does not answer this turn.
        follow_up: The turn depends on the earlier turns.
        correction: The turn corrects the previous question.
        kind: Free label.
        extra: Other fields, kept.
    """

    user: str
    pages: tuple[int, ...] = ()
    source: str | None = None
    answerable: bool = True
    follow_up: bool = False
    correction: bool = False
    kind: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Conversation:
    """A scripted multi-turn conversation (see the module docstring for the JSONL format)."""

    id: str
    turns: tuple[Turn, ...]
    title: str = ""
    behaviours: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def users(self) -> list[str]:
        """The customer's turns, in order."""
        return [t.user for t in self.turns]

    def to_dict(self) -> dict:
        """The conversation in the file format (`conversation_from_dict` reads it back)."""
        turns = [{**t.extra, "user": t.user, "page": list(t.pages) or None, "source": t.source,
                  "answerable": t.answerable, "follow_up": t.follow_up,
                  "correction": t.correction, "kind": t.kind} for t in self.turns]
        return {**self.extra, "id": self.id, "title": self.title,
                "behaviours": list(self.behaviours), "turns": turns}


def _flag(obj: dict, name: str, default: bool, where: str) -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: field {name!r} must be true or false, got {value!r}")
    return value


def _pages(value, where: str) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(p, int) and not isinstance(p, bool) for p in values):
        raise ValueError(f"{where}: field 'page' must be an integer or a list of integers, "
                         f"got {value!r}")
    return tuple(values)


def _turn(obj, n: int) -> Turn:
    where = f"turn {n}"
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    user = obj.get("user")
    if not isinstance(user, str) or not user.strip():
        raise ValueError(f"{where}: missing or empty field 'user'")
    answerable = _flag(obj, "answerable", True, where)
    pages = _pages(obj.get("page"), where)
    if pages and not answerable:
        raise ValueError(f"{where}: an unanswerable turn has no gold 'page'")
    return Turn(
        user=user.strip(), pages=pages, source=obj.get("source") or None, answerable=answerable,
        follow_up=_flag(obj, "follow_up", False, where),
        correction=_flag(obj, "correction", False, where), kind=str(obj.get("kind") or ""),
        extra={k: v for k, v in obj.items() if k not in _TURN_KNOWN},
    )


def conversation_from_dict(obj) -> Conversation:
    """Parse one conversation object.

    Raises:
        ValueError: A missing or malformed field (the message names it).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    cid = obj.get("id")
    if cid is None or str(cid).strip() == "":
        raise ValueError("missing field 'id'")
    turns = obj.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'turns' must be a non-empty list")
    behaviours = obj.get("behaviours") or []
    if not isinstance(behaviours, list):
        raise ValueError(f"field 'behaviours' must be a list, got {behaviours!r}")
    return Conversation(
        id=str(cid), turns=tuple(_turn(t, i) for i, t in enumerate(turns, start=1)),
        title=str(obj.get("title") or ""), behaviours=tuple(str(b) for b in behaviours),
        extra={k: v for k, v in obj.items() if k not in _CONV_KNOWN},
    )


def load_conversations(path: str | Path) -> tuple[list[Conversation], list[Problem]]:
    """Read a JSONL conversation file.

    Returns:
        The conversations in file order, and the skipped lines with their reasons.

    Raises:
        QuestionFileError: The file is missing or unreadable, or holds no usable conversation.
    """
    return read_items(path, conversation_from_dict, "conversation file",
                      "'id' and 'turns' (each turn with 'user')")


def _on_page(turn: Turn, pages: list[int]) -> bool:
    return any(near_page(pages, gold) for gold in turn.pages)


def _context_pages(record: dict, source: str | None) -> list[int]:
    contexts = [{"source": c.get("source"), "page": c.get("page")}
                for c in record.get("contexts") or []]
    return cited_pages({"citations": contexts}, source) + cited_pages(record, source)


def turn_correct(turn: Turn, record: dict) -> bool:
    """Whether one turn went as it should (see `turn_correct_rate`)."""
    if not turn.answerable:
        return not answered(record)
    if not answered(record):
        return False
    return not turn.pages or _on_page(turn, cited_pages(record, turn.source))


def _rate(hits: list[bool], what: str) -> Score | None:
    if not hits:
        return None
    return Score(sum(hits) / len(hits), f"{sum(hits)} of {len(hits)} {what}",
                 weight=float(len(hits)))


def conversation_scores(conv: Conversation, records: list[dict]) -> dict[str, Score]:
    """The conversation metrics of one conversation answered turn by turn with `records`.

    Per-turn metrics are weighted by their number of turns, so the mean over conversations is
    the rate over turns.
    """
    turns = list(zip(conv.turns, records, strict=True))
    modes = [answer_mode(r) for _, r in turns]
    correct = [turn_correct(t, r) for t, r in turns]
    rates = {
        "turn_correct_rate": _rate(correct, "turns correct"),
        "turn_cited_page_rate": _rate(
            [answered(r) and _on_page(t, cited_pages(r, t.source))
             for t, r in turns if t.answerable and t.pages], "answerable turns cited the page"),
        "turn_abstained_uncovered_rate": _rate(
            [not answered(r) for t, r in turns if not t.answerable],
            "uncovered turns not answered"),
        "turn_false_abstention_rate": _rate(
            [m == "abstained" for (t, _), m in zip(turns, modes, strict=True) if t.answerable],
            "answerable turns abstained"),
        "turn_over_refusal_rate": _rate([m == "refused" for m in modes], "turns refused"),
        "follow_up_resolved_rate": _rate(
            [_on_page(t, _context_pages(r, t.source)) for t, r in turns
             if (t.follow_up or t.correction) and t.pages], "follow-ups retrieved the page"),
    }
    out = {k: v for k, v in rates.items() if v is not None}
    failed = [i for i, ok in enumerate(correct, start=1) if not ok]
    out["conversation_success_rate"] = Score(
        float(not failed), "every turn correct" if not failed else f"turn(s) {failed} wrong")
    return out
