"""Who a free-text identity names. A change's author comes as text (git's `Name <email>`, a
full name, a username); separation of duties compares it with people, so the comparison
must not be fooled by case, compatibility forms (full-width letters), invisible characters
(zero-width spaces) or the `Name <email>` wrapping. Pure functions: no model, no query."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_NAME_ADDR = re.compile(r"^(?P<name>[^<>]*)<(?P<address>[^<>]*)>$")  # git's `Name <email>`


def normalize(text: str) -> str:
    """NFKC, case-folded, format characters (zero-width and the like) removed, whitespace
    collapsed: "ｓａｍ", "Sam" and "sa\u200bm" are all "sam"."""
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _SPACES.sub(" ", text).strip().casefold()


def names_in(text: str) -> set[str]:
    """The normalized identities a text may stand for: itself and, for `Name <email>`, the
    name and the address."""
    whole = normalize(text)
    if not whole:
        return set()
    found = {whole}
    match = _NAME_ADDR.match(whole)
    if match:
        found |= {part.strip() for part in match.group("name", "address") if part.strip()}
    return found


def person_names(user) -> set[str]:
    """The normalized identities of a person: username, e-mail address, full name."""
    full = " ".join(filter(None, [getattr(user, "first_name", ""), getattr(user, "last_name", "")]))
    return {
        n
        for n in (
            normalize(user.get_username()),
            normalize(getattr(user, "email", "") or ""),
            normalize(full),
        )
        if n
    }


def names_person(text: str, user) -> bool:
    """Does the free-text identity `text` name `user`?"""
    return bool(names_in(text) & person_names(user))
