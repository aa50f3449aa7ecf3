"""Redaction of customers' identifiers in ticket text: the one redactor of ingest and finetune.

Support tickets carry customers' emails, phone numbers, card numbers and bank account numbers.
In the index, the FAQ match would show them to whoever asks; in training data, a fine-tuned
model can memorise and repeat them. `redact` replaces each with a fixed placeholder (`[EMAIL]`,
`[PHONE]`, `[CARD]`, `[IBAN]`).

What counts, and what is deliberately left alone so a manual's vocabulary survives:

- emails, also spelled out (`bob at example dot com`, `bob (at) example.com`,
  `bob[at]example[dot]co[dot]uk`); a bare `at` needs a spelled `dot` and a real top-level
  domain too, so "find it at samsung.com" and "press at the dot on the screen" stay;
- card numbers of 13-19 digits that pass the Luhn check;
- IBANs in either case, contiguous or in groups of four, that pass the ISO 13616 mod-97 check
  and whose account part is mostly digits (so a run of four-letter words never qualifies);
- phone numbers: 7-15 digits with a leading `+`, a parenthesised area code or two separators,
  and bare 10-digit numbers shaped like a North American number (`4155550123`: area code and
  exchange start with 2-9) or a national number with a trunk 0 (`0301234567`); dates, times,
  IP addresses, versions (`1.2.3.4`), rows of decimals in specification tables, thousands
  separators, resolutions, PINs, Unix times and model numbers are not phone numbers.
"""

from __future__ import annotations

import re
from collections import Counter

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IBAN = "[IBAN]"

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Spelled-out emails: "at"/"dot" as words or in brackets. With a bracketed "(at)" any
# two-letter or common generic top-level domain counts; with a bare "at" (plain English) a
# spelled "dot" and a top-level domain that is not also a short English word ("on", "it",
# "to", ...) are needed, so "press at the dot on the screen" survives.
_BRACKET_AT = r"\s*[(\[{<]\s*at\s*[)\]}>]\s*"
_BRACKET_DOT = r"\s*[(\[{<]\s*dot\s*[)\]}>]\s*"
_GENERIC = r"com|org|net|edu|gov|mil|int|info|biz|name|mobi|app|dev|email|online|site"
_COUNTRY = r"uk|us|ca|au|nz|ie|de|fr|nl|es|pt|ch|se|dk|fi|pl|cz|jp|cn|kr|ru|br|mx|ar|za"
_LABEL_DOT = rf"[a-z0-9-]+(?:{_BRACKET_DOT}|\s+dot\s+|\.)"
_SPELLED_EMAIL_RE = re.compile(
    rf"""(?<![\w.@-])[a-z0-9][\w.+-]*
        (?: {_BRACKET_AT} (?:{_LABEL_DOT})+ (?:[a-z]{{2}}|{_GENERIC})
          | \s+at\s+ (?:{_LABEL_DOT})* [a-z0-9-]+(?:{_BRACKET_DOT}|\s+dot\s+)
                     (?:{_LABEL_DOT})* (?:{_GENERIC}|{_COUNTRY})
        )\b""",
    re.I | re.X,
)
# Two letters, two check digits, then the account part: contiguous, or in groups of four.
_IBAN_RE = re.compile(
    r"\b[a-z]{2}\d{2}(?:[a-z0-9]{11,30}|(?:[ ][a-z0-9]{4}){2,7}(?:[ ][a-z0-9]{1,4})?)\b", re.I)
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD_RE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# A leading + or ( or a digit, then digits with separators; digit count is checked afterwards.
# It must not stop inside a longer dotted token ("192.168.8.x").
_PHONE_RE = re.compile(r"(?<![\w+])(?:\+|\(\d)?[\d()][\d ().-]{5,}\d(?!\w|\.\w)")
# Bare digit runs that are phone numbers without any separator (checked in `_bare_phone`).
_BARE_PHONE_RE = re.compile(r"(?<![\w.,:/+-])\d{10,11}(?![\w.,:/-]\d|\w)")
_NANP = re.compile(r"1?[2-9]\d{2}[2-9]\d{6}")
_TRUNK_ZERO = re.compile(r"0[1-9]\d{8,9}")
_DATE_RE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_IPV4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_THOUSANDS_RE = re.compile(r"\d{1,3}(?:\.\d{3})+")


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """Whether a string passes the IBAN mod-97 check (spaces and case ignored)."""
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s.isalnum():
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _iban(m: re.Match, counts: Counter) -> str:
    text = m.group(0)
    account = text.replace(" ", "")[4:]
    # Real account parts are mostly digits (bank codes may be letters); prose is not.
    if sum(c.isdigit() for c in account) * 2 >= len(account) and iban_ok(text):
        counts["iban"] += 1
        return IBAN
    return text


def _card(m: re.Match, counts: Counter) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        counts["card"] += 1
        return CARD
    return m.group(0)


def _phone(m: re.Match, counts: Counter) -> str:
    text = m.group(0)
    stripped = text.strip()
    digits = re.sub(r"\D", "", text)
    # A phone number has 7-15 digits and either a leading + / parenthesised area code or at
    # least two separators; a date (with or without a time after it) is not one.
    separated = len(re.findall(r"[ ().-]", stripped)) >= 2
    if not 7 <= len(digits) <= 15 or _DATE_RE.match(stripped) or _IPV4_RE.fullmatch(stripped):
        return text
    # Specification tables: decimals in a row ("31.469 70.087"), thousands separators
    # ("273.879.750"), or a parenthesis that does not close ("720 (1440) x 576i").
    if "." in stripped and " " in stripped or _THOUSANDS_RE.fullmatch(stripped) \
            or stripped.count("(") != stripped.count(")"):
        return text
    if stripped.startswith(("+", "(")) or separated:
        counts["phone"] += 1
        # Keep the whitespace the pattern swallowed around the number.
        return text[: len(text) - len(text.lstrip())] + PHONE + text[len(text.rstrip()):]
    return text


def _bare_phone(m: re.Match, counts: Counter) -> str:
    digits = m.group(0)
    if _NANP.fullmatch(digits) or _TRUNK_ZERO.fullmatch(digits):
        counts["phone"] += 1
        return PHONE
    return digits


def redact(text: str) -> tuple[str, Counter]:
    """Replace emails, IBANs, card numbers and phone numbers with placeholders.

    Args:
        text: Ticket text (question, answer, or any field of a ticket).

    Returns:
        The redacted text and how many identifiers of each kind were replaced
        (keys `email`, `iban`, `card`, `phone`).
    """
    counts: Counter = Counter()

    def email(m: re.Match) -> str:
        counts["email"] += 1
        return EMAIL

    text = _EMAIL_RE.sub(email, text)
    text = _SPELLED_EMAIL_RE.sub(email, text)
    text = _IBAN_RE.sub(lambda m: _iban(m, counts), text)
    text = _CARD_RE.sub(lambda m: _card(m, counts), text)
    text = _PHONE_RE.sub(lambda m: _phone(m, counts), text)
    text = _BARE_PHONE_RE.sub(lambda m: _bare_phone(m, counts), text)
    return text, counts
