"""Salesforce record Ids: 18-char, case-safe, with the real checksum suffix.

The sandbox mints Ids the way Salesforce does so that connector code that
validates, shortens or compares Ids behaves the same against the sandbox.
"""

from __future__ import annotations

import re
import string

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
# Offset for the 12-char body so Ids look like real ones ("0068d0000Ab0001...") and
# still sort by creation order (base-62 digits are in ASCII order).
_BODY_OFFSET = sum(BASE62.index(c) * 62**i for i, c in enumerate(reversed("8d0000Ab0000")))
_ALNUM = re.compile(r"^[0-9A-Za-z]+$")
# Each Id character as one bit, "1" for an upper-case letter: a chunk's flags are then
# its bits read right to left (seeding a large org computes millions of checksums).
_UPPER_BITS = str.maketrans(
    dict.fromkeys(string.ascii_uppercase, "1")
    | dict.fromkeys(string.ascii_lowercase + string.digits, "0")
)


def checksum(id15: str) -> str:
    """Return the 3-char case-safe suffix Salesforce appends to a 15-char alphanumeric Id."""
    bits = id15.translate(_UPPER_BITS)
    return (
        _SUFFIX_ALPHABET[int(bits[4::-1], 2)]
        + _SUFFIX_ALPHABET[int(bits[9:4:-1], 2)]
        + _SUFFIX_ALPHABET[int(bits[14:9:-1], 2)]
    )


def encode_base62(number: int, width: int) -> str:
    """Encode a non-negative int as zero-padded base 62 (sortable as text)."""
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def make_id(key_prefix: str, counter: int) -> str:
    """Mint the 18-char Id for the counter-th record with this key prefix."""
    id15 = key_prefix + encode_base62(_BODY_OFFSET + counter, 12)
    return id15 + checksum(id15)


def normalize_id(value: str) -> str | None:
    """Return the canonical 18-char form of a 15- or 18-char Id, or None if malformed.

    Like Salesforce, an 18-char Id is accepted in any letter case: the suffix
    says which letters of the first 15 chars are upper case.
    """
    if not isinstance(value, str) or not _ALNUM.match(value):
        return None
    if len(value) == 15:
        return value + checksum(value)
    if len(value) != 18:
        return None
    if checksum(value[:15]) == value[15:]:
        return value  # already canonical, as nearly every Id is
    suffix = value[15:].upper()
    chars = list(value[:15])
    for chunk, suffix_char in enumerate(suffix):
        flags = _SUFFIX_ALPHABET.find(suffix_char)
        if flags < 0:
            return None
        for pos in range(5):
            index = chunk * 5 + pos
            upper = bool(flags & (1 << pos))
            if upper and not chars[index].isalpha():
                return None
            chars[index] = chars[index].upper() if upper else chars[index].lower()
    id15 = "".join(chars)
    return id15 + checksum(id15)
