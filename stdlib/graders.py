"""Rule graders the stdlib's rules use (stdlib/rules.py): pure functions of a reply.

`mentions` finds a word (or its plural) in a reply; `disowns` reads a reply that calls what it said before
an accident, a mistake or apologises for it (prefill intention). The judge rubrics of the concept-injection
experiments are templates in stdlib/introspection.intro.
"""

from __future__ import annotations

import re

from intro.stdlib.extractors import normalise


def _word_pattern(word: str) -> re.Pattern[str]:
    # simple English plurals count as the word: a model thinking about dogs is thinking about a dog
    return re.compile(rf"\b{re.escape(normalise(word))}(?:s|es)?\b")


def first_mention(response: str, word: str) -> int | None:
    """Index (in the normalised response) of the first mention of `word` or its plural, if any."""
    match = _word_pattern(word).search(normalise(response))
    return match.start() if match else None


def mentions(response: str, word: str) -> bool:
    return first_mention(response, word) is not None


# Disowning a forced word (prefill intention): calling it an accident or a mistake, or apologising.
# Matched on normalised text, where "didn't" reads "didnt".
_DISOWNING = re.compile(
    r"\b(?:accident(?:al|ally)?|mistakes?|mistaken|sorry|apologi[sz]e\w*|apolog(?:y|ies)"
    r"|unintentional(?:ly)?|unintended|didnt mean|did not mean|not intentional|wasnt intentional|typo)\b"
)
_NOT_AN_ACCIDENT = re.compile(r"\b(?:not|wasnt|isnt|no)\s+(?:an?\s+)?(?:accident|mistake)\b")


def disowns(response: str) -> bool:
    """The reply disowns what it said before: an accident, a mistake, an apology (but "not an accident" owns it)."""
    text = _NOT_AN_ACCIDENT.sub(" ", normalise(response))
    return _DISOWNING.search(text) is not None
