"""The one text module: words, stop words, stems, content words, sentences, overlap, anchors.

Every package that compares texts goes through here (BM25 indexing and queries, grading, answer
verification, FAQ matching, training-data building, evaluation), so that "a word" means the same
thing everywhere:

- `words`: lower-cased runs of letters and digits (Unicode-aware, underscores split words);
- `STOP_WORDS`: English function words plus question filler ("please", "tell", "possible"),
  which carry no topic in a support question;
- `stem`: a small suffix stemmer ("resetting", "resets", "reset" -> "reset");
- `content_words` = stems of the non-stop words; `keywords` = the same words unstemmed (for
  queries a person or an embedder reads);
- `normalise`: the words joined by single spaces (case, punctuation and spacing aside);
- `sentences`: a sentence splitter that keeps menu paths, decimals, enumerations ("1. Turn off
  ...") and common abbreviations in one piece;
- `overlap`: the share of one text's distinct content words found in another;
- `negated`: the content words a negation governs ("does not support AirPlay" -> support),
  so that verification can tell a claim from its opposite;
- `char_ngrams`: the letter sequences inside each word (the guard's spelling-robust features).

And the anchors that answer verification checks verbatim (`retrieval.grounding`): `quantities`
(numbers with their unit, number words read as digits: "ten seconds" == "10 s"), `quoted`
strings, `menu_paths` ("Settings > General > Network"), `urls` (and bare domains, e-mail
addresses), and `names` (UI labels and product names: capitalised runs such as "Reset button",
"Dolby Atmos", "Universal Remote").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_WORD = re.compile(r"[^\W_]+")

STOP_WORDS = frozenset(
    # English function words (the list BM25 used before this module existed) ...
    "a about above after again against all am an and any are as at be because been before being "
    "below between both but by can could did do does doing down during each few for from further "
    "had has have having he her here hers herself him himself his how i if in into is it its "
    "itself just me more most my myself no nor not now of off on once only or other our ours "
    "ourselves out over own same she should so some such than that the their theirs them "
    "themselves then there these they this those through to too under until up very was we were "
    "what when where which while who whom why will with would you your yours yourself "
    "yourselves "
    # ... the fragments that contractions split into ("don't" -> "don", "t") ...
    "s t d ll m re ve don doesn isn aren wasn weren didn haven hasn won wouldn couldn shouldn "
    "can cannot "
    # ... and question filler: words that say how someone asks, not what about.
    "please tell know want need way ways get use using show explain possible also much many "
    "may might must shall".split()
)

# Abbreviations after which a period does not end a sentence.
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs approx fig no nos p pp ca cf dr mr mrs ms st incl max min".split()
)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\s*\n\s*")


@lru_cache(maxsize=1 << 20)
def stem(word: str) -> str:
    """Strip common English inflections so that word forms of one stem match.

    A deliberately small rule set (plural -s/-es/-ies, -ing, -ed, a final -e, doubled final
    consonants): cheap, predictable, and applied to every text alike, so its imperfections
    cancel out. Words of three letters or fewer and words with digits are left alone.

    Args:
        word: A lower-cased word.

    Returns:
        The stem.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
                word = word[:-1]  # resetting -> resett -> reset
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]  # configure / configured / configuring -> configur
    return word


def words(text: str) -> list[str]:
    """Lower-cased words (runs of letters and digits) of `text`, in order."""
    return _WORD.findall(text.lower())


def keywords(text: str) -> list[str]:
    """The words of `text` that are not stop words, unstemmed, in order (repeats kept)."""
    return [w for w in words(text) if w not in STOP_WORDS]


def content_words(text: str) -> list[str]:
    """Stems of the non-stop words of `text`, in order (repeats kept).

    This is the token of BM25, grading, verification and data building.
    """
    return [stem(w) for w in keywords(text)]


def normalise(text: str) -> str:
    """`text` as its words joined by single spaces: case, punctuation and spacing aside."""
    return " ".join(words(text))


def overlap(text: str, other: str) -> float:
    """Share of the distinct content words of `text` that also occur in `other` (0 to 1).

    Returns 0.0 when `text` has no content words.
    """
    mine = set(content_words(text))
    if not mine:
        return 0.0
    return len(mine & set(content_words(other))) / len(mine)


# Words that negate what follows them in their clause. "t" is the tail of a split contraction
# ("doesn't" -> "doesn", "t"); "no" covers "no sound", "never", "without" and "nor" the rest.
NEGATIONS = frozenset("not no never cannot without none nor t".split())
# A negation governs this many content words after it, and never past its clause: "If the TV does
# not turn on, press Power" negates "turn", not "press". One: the word after "not" is the verb or
# adjective it denies ("not support", "not available", "no sound", "without Wi-Fi"); a wider scope
# reaches the objects, and "Do not turn off the TV" would then deny "the TV" too.
NEGATION_SCOPE = 1
_CLAUSE_BREAK = re.compile(r"[,;:.!?()\[\]]|\b(?:but|however|although|though|unless|whereas|"
                           r"instead|except)\b", re.IGNORECASE)


def clauses(text: str) -> list[str]:
    """The clauses of `text`: its pieces between punctuation (`, ; : . ! ? ( ) [ ]`) and the
    conjunctions that turn a sentence (but, however, although, though, unless, whereas,
    instead, except), stripped, empty ones dropped. The scope of a negation (`negated`) and of
    verification's per-clause coverage (`retrieval.grounding.CLAUSE_MIN_COVERAGE`)."""
    return [c.strip() for c in _CLAUSE_BREAK.split(text) if c and c.strip()]


def negated(text: str) -> set[str]:
    """Stems of the content words of `text` that a negation governs.

    A negation word (`NEGATIONS`) governs the next `NEGATION_SCOPE` content words of its clause:
    "The TV does not support Apple AirPlay." -> {"support"}; "If there is no sound, check the
    cable." -> {"sound"}. Deliberately shallow (no parse), and applied alike to an answer and to
    its passage, which is what a comparison of the two needs.

    Args:
        text: Any text.

    Returns:
        The governed stems (empty when `text` negates nothing).
    """
    out: set[str] = set()
    for clause in clauses(text):
        left = 0
        for word in words(clause):
            if word in NEGATIONS:
                left = NEGATION_SCOPE
            elif left and word not in STOP_WORDS:
                out.add(stem(word))
                left -= 1
    return out


def char_ngrams(text: str, sizes: tuple[int, ...] = (2, 3, 4, 5)) -> list[str]:
    """The character n-grams of each word of `text`, the word padded with one space each side.

    "bomb" gives " b", "bo", ..., " bom", ..., "omb ": a misspelled word ("b0mb", "bommb") or a
    cognate in another language ("bomba") still shares most of them with the word it stands
    for, which is why the guard's second scorer reads them. Words are `words(text)`, so case
    and punctuation do not count. A word shorter than a size gives its padded whole once.

    Args:
        text: Any text.
        sizes: The n-gram lengths.

    Returns:
        The n-grams in order, repeats kept (a term-frequency vectoriser counts them).
    """
    grams: list[str] = []
    for word in words(text):
        padded = f" {word} "
        for n in sizes:
            if n >= len(padded):  # the whole padded word, once, however many sizes exceed it
                grams.append(padded)
                break
            grams += [padded[i:i + n] for i in range(len(padded) - n + 1)]
    return grams


def word_ngrams(text: str) -> list[str]:
    """The words of `text` and each pair of neighbouring words ("my", "passwords", "my passwords").

    The pairs keep who a request is about ("my passwords" against "her password"), which the
    sentence vector blurs and letter n-grams inside words cannot see; `bench/guard_folds.py`
    tries them as a third guard scorer. Words are `words(text)`.

    Args:
        text: Any text.

    Returns:
        The words in order, then the pairs in order, repeats kept.
    """
    w = words(text)
    return w + [f"{a} {b}" for a, b in zip(w, w[1:])]


def sentences(text: str) -> list[str]:
    """Split `text` into sentences, in order, stripped; fragments of one character dropped.

    A sentence ends at `.`, `!` or `?` followed by space, or at a line break. A period does not
    end a sentence after an abbreviation ("e.g."), a single letter ("p."), or a short number
    that enumerates steps ("1. Turn off the modem."), nor when the next word starts in lower
    case ("approx. two minutes").
    """
    out: list[str] = []
    start = 0
    for m in _SENTENCE_BREAK.finditer(text):
        piece = text[start : m.start()]
        if "\n" not in m.group(0) and not _ends_sentence(piece, text[m.end() : m.end() + 1]):
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if len(s) > 1]


def passage_sentences(text: str) -> list[str]:
    """The numbered sentences of a passage (the prompt's `(n.1)`, `(n.2)`, ..., a quote's
    sentence numbers): `sentences`, or the whole stripped text when it has none."""
    return sentences(text) or [text.strip()]


def _ends_sentence(piece: str, next_char: str) -> bool:
    if next_char and next_char.islower():
        return False
    last = piece.rstrip("\"'”’)]").rstrip(".!?").rsplit(None, 1)
    if not last:
        return False
    token = last[-1].lower()
    if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
        return False
    return not (token.isdigit() and len(token) <= 2 and len(last) == 1)


# --------------------------------------------------------------------------- anchors

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "sixty": "60", "ninety": "90", "hundred": "100",
}
# Unit spellings -> one canonical unit. Only these count as units; any other word after a number
# ("1 to 24 hours", "Cat 6 cable") leaves the number without a unit.
_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "second"),
    **dict.fromkeys(("ms", "millisecond", "milliseconds"), "millisecond"),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), "minute"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "hour"),
    **dict.fromkeys(("day", "days"), "day"),
    **dict.fromkeys(("week", "weeks"), "week"),
    **dict.fromkeys(("month", "months"), "month"),
    **dict.fromkeys(("year", "years"), "year"),
    **dict.fromkeys(("%", "percent", "per cent"), "percent"),
    **dict.fromkeys(("times", "time"), "times"),
    **dict.fromkeys(("character", "characters", "char", "chars"), "character"),
    **dict.fromkeys(("digit", "digits"), "digit"),
    **dict.fromkeys(("degree", "degrees", "°", "°c", "°f"), "degree"),
    **dict.fromkeys(("inch", "inches", '"'), "inch"),
    **{u: u for u in ("hz", "khz", "mhz", "ghz", "kbps", "mbps", "gbps", "kb", "mb", "gb", "tb",
                      "v", "a", "ma", "w", "kw", "kwh", "mm", "cm", "m", "km", "g", "kg", "lb",
                      "lbs", "db", "k", "p", "fps", "px", "dpi", "mah")},
}
_NUMBER_WORD_RE = "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
_QUANTITY = re.compile(
    rf"(?<![\w.])(?:(\d+(?:[.,:]\d+)*)|\b({_NUMBER_WORD_RE})\b)"
    r"(?:[\s-]*(%|°[cf]?|per cent|[a-z]+\b))?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Quantity:
    """A number as written in a text, with its unit when one follows it.

    Attributes:
        value: The number in digits ("10", "2.4", "192.168.8.1", "02:00").
        unit: Canonical unit ("second", "ghz", "percent") or `None`.
    """

    value: str
    unit: str | None = None

    def __str__(self) -> str:
        return f"{self.value} {self.unit}" if self.unit else self.value


def quantities(text: str) -> list[Quantity]:
    """The numbers of `text` with their units, number words read as digits.

    "ten seconds", "10 s" and "10-second" all give `Quantity("10", "second")`; "2.4GHz" gives
    `Quantity("2.4", "ghz")`; "AX3000" (a name with digits) gives nothing here (see `names`).
    """
    out = []
    for m in _QUANTITY.finditer(text):
        digits, word, unit = m.group(1), m.group(2), m.group(3)
        value = digits.replace(",", "") if digits and re.fullmatch(r"\d{1,3}(,\d{3})+", digits) \
            else (digits or _NUMBER_WORDS[word.lower()])
        canonical = _UNITS.get(unit.lower()) if unit else None
        out.append(Quantity(value, canonical))
    return out


_QUOTED = re.compile(r"[\"“]([^\"“”\n]{2,160})[\"”]|(?:^|(?<=[\s(]))['‘]([^'‘’\n]{2,160}?)['’]"
                     r"(?=[\s.,;:!?)]|$)")


def quoted(text: str) -> list[str]:
    """Strings in double quotes, or in single quotes that open after a space and close before
    punctuation or space (so "don't ... it's" is not a quote), stripped of surrounding spaces and
    end punctuation."""
    return [q.strip().rstrip(".,;:!?").strip() for a, b in _QUOTED.findall(text)
            if (q := a or b).strip()]


# A menu path: two or more labels joined by ">" (the manuals write "Settings >General> Network").
_MENU_LABEL = r"[\w'’+&/-]+(?:[ \t]+[\w'’+&/-]+){0,4}"
_MENU_PATH = re.compile(rf"{_MENU_LABEL}(?:[ \t]*>[ \t]*{_MENU_LABEL})+")
_PATH_VERBS = frozenset("open go select choose navigate press tap click visit find then".split())


def menu_paths(text: str) -> list[list[str]]:
    """Menu paths of `text` as lists of normalised labels, e.g. `[["settings", "general"]]`.

    The first label is cut to its trailing capitalised words and the others end at their first
    stop word ("In the console open Wireless > Basic Settings and click Save" gives
    `["wireless", "basic settings"]`), so that a path is compared by its labels, not by the
    words around it.
    """
    out = []
    for m in _MENU_PATH.finditer(text):
        labels = [lab.strip() for lab in m.group(0).split(">")]
        head = labels[0].split()
        keep = []
        for token in reversed(head):
            if not (token[:1].isupper() or token[:1].isdigit()):
                break
            keep.insert(0, token)
        while len(keep) > 1 and keep[0].lower() in _PATH_VERBS:
            keep.pop(0)  # "Open Wireless > Security": the verb is not a menu label
        labels[0] = " ".join(keep) or head[-1]
        # Later labels end at the first stop word: "Basic Settings and click Save" -> "Basic
        # Settings".
        for i in range(1, len(labels)):
            tokens = labels[i].split()
            cut = next((j for j, t in enumerate(tokens) if j and t.lower() in STOP_WORDS),
                       len(tokens))
            labels[i] = " ".join(tokens[:cut])
        normalised = [normalise(lab) for lab in labels]
        if all(normalised):
            out.append(normalised)
    return out


_URL = re.compile(
    r"\b(?:https?://[^\s<>\"')\]]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|(?:[a-z0-9-]+\.)+"
    r"(?:com|net|org|io|info|biz|co|uk|de|fr|ru|cn|xyz|top|example|home|local)\b(?:/[^\s<>\"')\]]*)?)",
    re.IGNORECASE,
)


def urls(text: str) -> list[str]:
    """URLs, e-mail addresses and bare domain names ("evil.example.com") in `text`, lower-cased,
    without trailing punctuation."""
    return [u.lower().rstrip(".,;:!?") for u in _URL.findall(text)]


# Nouns that complete a name: "Universal remote" is the Universal Remote, not any remote, and a
# passage about the Universal Guide must not pass for it. Descriptive nouns ("mode", "option",
# "feature", "setting", "screen") are left out: "Dynamic mode" is named "Dynamic" in a manual.
UI_NOUNS = frozenset(
    "remote guide hub app apps account button key port cable menu bar panel tab icon sensor "
    "light switch timer assistant controller".split()
)
_TOKEN = re.compile(r"[^\W_][\w+'’-]*")


# The pronoun and its contractions: capitalised by grammar, never part of a name.
_PRONOUN_I = re.compile(r"I(?:['’](?:m|ve|d|ll))?")
# An all-caps word at least this long without a digit is emphasis ("THIRD", "EVERYTHING"), not a
# name; acronyms are shorter ("HDMI", "QLED", "USB", "TV").
EMPHASIS_MIN_LETTERS = 5


def _is_name_token(token: str) -> bool:
    if _PRONOUN_I.fullmatch(token):
        return False
    if token.isupper() and len(token) >= EMPHASIS_MIN_LETTERS and token.isalpha():
        return False
    return token[:1].isupper() or any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def _is_strong(token: str) -> bool:
    """All-caps, mixed-case or alphanumeric: a name even at the start of a sentence."""
    rest = token[1:]
    return (token.isupper() and len(token) > 1) or any(c.isupper() for c in rest) or (
        any(c.isdigit() for c in token) and any(c.isalpha() for c in token))


def names(text: str) -> list[str]:
    """Product names and UI labels in `text`, normalised ("dolby atmos", "reset button").

    A name is a run of capitalised (or alphanumeric, like "AX3000") words with only spaces
    between them, without leading stop words, extended by one following UI noun in lower case
    ("Universal remote" -> "universal remote", "Reset button" -> "reset button"). The first word
    of a sentence is capitalised for grammar, so it starts a name only when it is all-caps,
    mixed-case or alphanumeric ("HDMI", "AirPlay"). Punctuation other than a menu path's ">"
    ends a name ("HDMI, Bluetooth" are two); the pronoun "I" and an all-caps word of
    `EMPHASIS_MIN_LETTERS` letters or more (shouting: "THIRD", "EVERYTHING") are no names.
    """
    out: list[str] = []
    for sentence in sentences(text) or [text]:
        matches = list(_TOKEN.finditer(sentence))
        tokens = [re.sub(r"['’]s$", "", m.group()) for m in matches]
        # A token continues its predecessor's name when only whitespace, or a menu path's ">",
        # separates them ("Settings > Picture Mode" stays one anchor for a claim).
        joined = [i > 0 and sentence[matches[i - 1].end():m.start()].strip() in ("", ">")
                  for i, m in enumerate(matches)]
        run: list[str] = []

        def close(next_token: str | None) -> None:
            while run and run[0].lower() in STOP_WORDS:
                run.pop(0)
            if run and next_token is not None and next_token.lower() in UI_NOUNS \
                    and not _is_name_token(next_token):
                run.append(next_token)
            if run:
                name = normalise(" ".join(run))
                if name and name not in out and name not in STOP_WORDS:
                    out.append(name)
            run.clear()

        for i, token in enumerate(tokens):
            if run and not joined[i]:
                close(None)  # punctuation between: the name ended
            starts = i == 0 and not _is_strong(token)
            if _is_name_token(token) and not starts:
                run.append(token)
            else:
                close(token)  # after punctuation the run is already closed
        close(None)
    return out
