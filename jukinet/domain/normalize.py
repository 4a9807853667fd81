"""Search keys: exact match after folding what a clerk's keyboard varies — never fuzzy.

NFKC (full/half width, compatibility forms), katakana folded to hiragana, spaces removed, case folded.
Kanji variants (高/髙, 吉/𠮷) are NOT folded: they are different registered names."""

import unicodedata

import jaconv

_SPACES = str.maketrans("", "", " \u3000\t")


def search_key(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text)
    return jaconv.kata2hira(folded).translate(_SPACES).casefold()
