"""Search-key folding agrees with jaconv (the maintained reference) and folds only what it should."""

import jaconv
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jukinet.domain.normalize import search_key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ﾔﾏﾀﾞ ﾀﾛｳ", "やまだたろう"),
        ("山田　太郎", "山田 太郎"),
        ("ＹＡＭＡＤＡ", "yamada"),
        ("東京都調布市２丁目", "東京都調布市2丁目"),
    ],
)
def test_width_kana_space_and_case_variants_fold_together(a: str, b: str) -> None:
    assert search_key(a) == search_key(b)


def test_kanji_variants_and_partial_names_do_not_fold() -> None:
    assert search_key("髙橋") != search_key("高橋")
    assert search_key("山田") != search_key("山田太郎")


@given(st.text(alphabet=st.characters(min_codepoint=0x3000, max_codepoint=0x30FF), max_size=30))
def test_kana_folding_matches_jaconv(text: str) -> None:
    import unicodedata

    reference = jaconv.kata2hira(unicodedata.normalize("NFKC", text)).replace(" ", "").replace("\u3000", "").casefold()
    assert search_key(text) == reference
