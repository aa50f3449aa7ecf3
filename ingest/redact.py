"""Redaction of personal identifiers in ticket text before it becomes training data.

Support tickets carry customers' emails, phone numbers, card numbers and bank account numbers;
a fine-tuned model can memorise and repeat them. `redact` replaces each with a fixed placeholder
(`[EMAIL]`, `[PHONE]`, `[CARD]`, `[IBAN]`). Card numbers are only replaced when they pass the Luhn
check and IBANs when they pass the ISO 13616 mod-97 check, so model numbers, firmware versions
and resolutions in the manual's vocabulary survive.
"""

from __future__ import annotations

import re
from collections import Counter

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IBAN = "[IBAN]"

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Two letters, two check digits, then 11-30 alphanumerics, optionally grouped by spaces.
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD_RE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# A leading + or ( or a digit, then digits with separators; digit count is checked afterwards.
_PHONE_RE = re.compile(r"(?<![\w+])(?:\+|\(\d)?[\d()][\d ().-]{5,}\d(?![\w])")
_DATE_RE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


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
    """Whether a string passes the IBAN mod-97 check (spaces ignored)."""
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _card(m: re.Match, counts: Counter) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        counts["card"] += 1
        return CARD
    return m.group(0)


def _phone(m: re.Match, counts: Counter) -> str:
    text = m.group(0)
    digits = re.sub(r"\D", "", text)
    # Dates and bare numbers (counts, resolutions) are not phone numbers: a phone number has
    # 7-15 digits and either a leading + / parenthesised area code or at least two separators.
    separated = len(re.findall(r"[ ().-]", text.strip())) >= 2
    if not 7 <= len(digits) <= 15 or _DATE_RE.match(text.strip()):
        return text
    if text.startswith(("+", "(")) or separated:
        counts["phone"] += 1
        return PHONE
    return text


def redact(text: str) -> tuple[str, Counter]:
    """Replace emails, IBANs, card numbers and phone numbers with placeholders.

    Args:
        text: Ticket text (question or answer).

    Returns:
        The redacted text and how many identifiers of each kind were replaced
        (keys `email`, `iban`, `card`, `phone`).
    """
    counts: Counter = Counter()

    def email(m: re.Match) -> str:
        counts["email"] += 1
        return EMAIL

    def iban(m: re.Match) -> str:
        if iban_ok(m.group(0)):
            counts["iban"] += 1
            return IBAN
        return m.group(0)

    text = _EMAIL_RE.sub(email, text)
    text = _IBAN_RE.sub(iban, text)
    text = _CARD_RE.sub(lambda m: _card(m, counts), text)
    text = _PHONE_RE.sub(lambda m: _phone(m, counts), text)
    return text, counts
