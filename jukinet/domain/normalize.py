"""Search keys: exact match after folding what a clerk's keyboard varies — never fuzzy.

NFKC (full/half width, compatibility forms), katakana folded to hiragana, spaces removed, case folded.
Kanji variants (高/髙, 吉/𠮷) are NOT folded: they are different registered names.

This runs for every registration the center stores, so the kana folding is one str.translate table
(equivalent to jaconv.kata2hira for ァ–ヶ, checked by the unit tests) rather than a per-character loop."""

import unicodedata

_KANA = [*range(ord("ァ"), ord("ヶ") + 1), ord("ヽ"), ord("ヾ")]  # as jaconv.kata2hira (ヷ–ヺ have no hiragana)
_FOLD: dict[int, int | None] = {code: code - 0x60 for code in _KANA}
_FOLD.update({ord(" "): None, ord("\u3000"): None, ord("\t"): None})


def search_key(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_FOLD).casefold()
