"""Validators that turn regex candidates into findings: checksums and structure checks."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CARD_SEP = re.compile(r"[ -]")


def valid_card(s: str) -> bool:
    groups = _CARD_SEP.split(s)
    digits = "".join(groups)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    if len(groups) > 1:
        # Written cards are grouped (4-4-4-4, 4-6-5); loose digits spaced one by one are prose.
        if len({sep for sep in s if sep in " -"}) > 1:
            return False
        if any(not 4 <= len(g) <= 6 for g in groups[:-1]) or not 1 <= len(groups[-1]) <= 6:
            return False
    return luhn_ok(digits)


def iban_ok(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def valid_iban(s: str) -> bool:
    compact = s.replace(" ", "")
    return 15 <= len(compact) <= 34 and iban_ok(compact)


def valid_ssn(s: str) -> bool:
    area, group, serial = s.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_DIGIT = re.compile(r"[0-9]")


def valid_phone(s: str) -> bool:
    n = len(_DIGIT.findall(s))
    return 8 <= n <= 15 if s.startswith("+") else n == 10


def valid_ipv4(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def valid_ipv6(s: str) -> bool:
    # "d::" (from std::vector) parses as IPv6; demanding two real groups and a digit keeps code prose out.
    groups = [g for g in s.split(":") if g]
    if len(groups) < 2 or _DIGIT.search(s) is None:
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def mixed_token(s: str) -> bool:
    """Random tokens mix cases and digits; hyphenated English words do not."""
    return any(c.isdigit() for c in s) and any(c.islower() for c in s) and any(c.isupper() for c in s)


def _valid_aws_secret(s: str) -> bool:
    return any(c.islower() for c in s) and any(c.isupper() for c in s) and any(c in "0123456789/+" for c in s)


def valid_jwt(s: str) -> bool:
    header = s.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(decoded, dict) and "alg" in decoded
