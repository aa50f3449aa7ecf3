"""How the answer relevance bar reads a question's words against the index (`IndexTerms`).

The bar (`retrieval.grounding.relevance`) weighs each content word of the question by its IDF
in the index, and a word that no indexed chunk holds gets the highest IDF: a passage can never
hold it, so a question that leans on it ("Does the TV support AirPlay?", "How much does the TV
weigh?") is about something the manual does not cover, and the bar keeps the agent from
quoting a sentence that merely shares the question's other words. The same rule sank
questions the manual does cover, when one word is a misspelling of a word it holds ("how do i
delet a chanel", "pair the samsng smart remot") or a British spelling of it ("favourites"
against the manual's "Favorites", "colour" against "color").

`IndexTerms.read` reads such a word as the indexed word it misspells, so that it weighs and
matches as that word; every other unseen word keeps the highest IDF. A misspelling is an unseen
word of at least `ALIAS_MIN_LETTERS` letters one edit (Damerau-Levenshtein: a letter added,
dropped, changed or two swapped) from an indexed word, and either

- not an English word: not among the whole words of the bundled embedder's WordPiece
  vocabulary (`english_stems`; about 21,700 lower-case words, which hold brand and product
  names such as "airplay" and "iphone" too): a typo ("chanel" -> channel, "samsng" ->
  samsung), or
- an English word that the retrieval embedder places next to that indexed word (cosine of the
  two words' vectors at least `ALIAS_MIN_COSINE`): a spelling variant ("colour" -> color 0.97,
  "favourites" -> favorites 0.87) rather than another word one letter away ("mount" -> amount
  0.22, "iphone" -> phone 0.72).

Words of fewer letters are never read as another: one edit from a three- or four-letter word
reaches many words ("volt" -> vol, "vpn" -> vp8, "amd" -> add), and several of them are the
product terms an unanswerable question turns on. What this rule does not do: words the manual
lacks that are simply English ("wrong", "fix", "fill the whole screen") keep the highest IDF;
no signal measured so far tells them from the ones unanswerable questions turn on ("weigh",
"price", "warranty"; docs/eval.md has the measurements).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from retrieval.bm25 import BM25Index
from retrieval.text import stem
from retrieval.types import Embedder

# A misspelling is read as the indexed word only when it has at least this many letters.
ALIAS_MIN_LETTERS = 5
# An English word one edit from an indexed word is read as it only when the embedder places
# the two this close (cosine of their vectors).
ALIAS_MIN_COSINE = 0.8


@lru_cache(maxsize=1)
def english_stems() -> frozenset[str]:
    """Stems (`retrieval.text.stem`) of the whole lower-case words of the bundled embedder's
    WordPiece vocabulary (`vocab.txt` of all-MiniLM-L6-v2): the English word list of
    `IndexTerms`. Empty when the bundled model is not installed (then every unseen word one
    edit from an indexed word counts as a typo)."""
    from retrieval.embeddings import bundled_model_path
    from retrieval.errors import ModelNotFoundError

    try:
        path = bundled_model_path() / "vocab.txt"
    except ModelNotFoundError:
        return frozenset()
    if not path.is_file():
        return frozenset()
    return frozenset(stem(w) for w in path.read_text(encoding="utf-8").split()
                     if w.isalpha() and w.islower() and w.isascii())


def _cosine(a: list[float], b: list[float]) -> float:
    return float(sum(x * y for x, y in zip(a, b, strict=True)))


class IndexTerms:
    """The relevance bar's reading of content words against the current index.

    `weight(word)` is the word's IDF (`BM25Index.idf`); `read(word)` is the indexed word it
    misspells, or the word itself (see the module docstring). Both follow the index `index()`
    returns, so a re-ingested collection is read as it is now.

    Args:
        index: Returns the current keyword index (`Searcher.keyword_index`).
        embedder: The retrieval embedder (unit vectors), for English spelling variants; `None`:
            English words are never read as another.
        english: Stems of English words (default `english_stems()`, read on the first
            misspelling candidate, not at start-up: it takes about 0.4 s).
    """

    def __init__(self, index: Callable[[], BM25Index], embedder: Embedder | None = None,
                 english: frozenset[str] | None = None) -> None:
        self._index = index
        self._embedder = embedder
        self._english = english
        self._read: dict[str, str] = {}
        self._read_for: BM25Index | None = None

    def weight(self, word: str) -> float:
        """IDF of `word` in the current index (the highest for a word no chunk holds)."""
        return self._index().idf(word)

    def read(self, word: str) -> str:
        """The indexed word that `word` (a content word) misspells, or `word` itself."""
        index = self._index()
        if index is not self._read_for:
            self._read, self._read_for = {}, index
        if word in index or len(word) < ALIAS_MIN_LETTERS or not word.isalpha():
            return word
        if word not in self._read:
            self._read[word] = self._misspelt(word, index)
        return self._read[word]

    def _misspelt(self, word: str, index: BM25Index) -> str:
        from rapidfuzz import process
        from rapidfuzz.distance import DamerauLevenshtein

        near = [t for t, _, _ in process.extract(word, index.terms(),
                                                 scorer=DamerauLevenshtein.distance,
                                                 score_cutoff=1, limit=None)]
        if not near:
            return word
        # the commonest of equally near words (lowest IDF): the likeliest to be meant
        near.sort(key=lambda t: (index.idf(t), t))
        if self._english is None:
            self._english = english_stems()
        if word not in self._english:
            return near[0]
        if self._embedder is None:
            return word
        vector = self._embedder.embed_query(word)
        close = [t for t in near
                 if _cosine(vector, self._embedder.embed_query(t)) >= ALIAS_MIN_COSINE]
        return close[0] if close else word
