"""Caption phrasings of tiny-world scenes, and their inverse: prompt → scene, prompt → nearest in-world captions.

Every scene has several phrasings (the first is canonical). :func:`parse_prompt` maps any of them back to its scene,
ignoring case, extra whitespace, trailing punctuation and a trailing view suffix (", front view"); it also accepts
shape synonyms and the framing prefixes in any combination with any relation phrasing. :func:`nearest_prompts`
ranks the canonical captions by token overlap (then by character similarity), for the "prompt outside the world"
warning.
"""
from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Collection, Optional

from ..cameras import VIEW_SUFFIXES
from .shapes import ASYMMETRIC_OBJECTS, COLOUR_NAMES, SHAPE_NAMES, SHAPE_SYNONYMS

if TYPE_CHECKING:  # pragma: no cover
    from .scenes import Scene

__all__ = [
    "RELATIONS",
    "normalize_text",
    "article",
    "object_phrase",
    "single_captions",
    "composition_captions",
    "parse_prompt",
    "nearest_prompts",
]

#: Relations between the two objects of a composition: A "on top of" B (A stacked above B, on Y); A "next to" B
#: (side by side on X, A on the left seen from the front, i.e. at -X).
RELATIONS: tuple[str, ...] = ("on_top_of", "next_to")

_FRAMINGS = ("a 3D render of ", "a photo of ")
#: Prefixes stripped before parsing (lower case); the generated ones plus a few common ones.
_PREFIXES = ("a 3d render of ", "a 3d model of ", "a render of ", "a photo of ", "an image of ", "a picture of ")
_SUFFIXES = (", 3d render", " 3d render")
_VIEW_RE = re.compile(r"[,;\s]+(?:" + "|".join(re.escape(s) for s in VIEW_SUFFIXES) + r")$")


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace, drop trailing punctuation and a trailing view suffix."""
    s = " ".join(text.lower().split()).strip(" .,;!")
    return _VIEW_RE.sub("", s).strip(" .,;!")


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def object_phrase(shape: str, colour: str, noun: Optional[str] = None) -> str:
    """"a red cube", "an orange sphere" (``noun`` overrides the shape's canonical noun)."""
    return f"{article(colour)} {colour} {noun or shape}"


def single_captions(shape: str, colour: str) -> tuple[str, ...]:
    """Phrasings of one coloured primitive; the first is canonical."""
    obj = object_phrase(shape, colour)
    out = [obj, f"{article(shape)} {shape} that is {colour}"]
    out += [object_phrase(shape, colour, noun) for noun in SHAPE_SYNONYMS[shape]]
    out += [framing + obj for framing in _FRAMINGS]
    return tuple(out)


def composition_captions(shape_a: str, colour_a: str, relation: str, shape_b: str, colour_b: str) -> tuple[str, ...]:
    """Phrasings of "A <relation> B"; the first is canonical."""
    a, b = object_phrase(shape_a, colour_a), object_phrase(shape_b, colour_b)
    if relation == "on_top_of":
        out = [f"{a} on top of {b}", f"{a} on {b}", f"{a} stacked on {b}", f"{b} under {a}",
               f"{b} with {a} on top", f"a 3D render of {a} on top of {b}"]
    elif relation == "next_to":
        out = [f"{a} next to {b}", f"{a} beside {b}", f"{a} to the left of {b}", f"{b} to the right of {a}",
               f"{a} and {b} side by side", f"a 3D render of {a} next to {b}"]
    else:
        raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _object_table() -> dict[str, tuple[str, str]]:
    """Normalised object phrase → (shape, colour), for every shape noun/synonym, with or without an article."""
    table: dict[str, tuple[str, str]] = {}
    for shape in SHAPE_NAMES:
        for colour in COLOUR_NAMES:
            for noun in (shape, *SHAPE_SYNONYMS[shape]):
                for art in ("a ", "an ", "the ", ""):
                    table[f"{art}{colour} {noun}"] = (shape, colour)
                    table[f"{art}{noun} that is {colour}"] = (shape, colour)
    return table


@lru_cache(maxsize=1)
def _asymmetric_table() -> dict[str, str]:
    table = {}
    for name, obj in ASYMMETRIC_OBJECTS.items():
        for caption in obj.captions:
            table[_strip_framing(normalize_text(caption))] = name
    return table


def _strip_framing(s: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if s.startswith(prefix):
                s, changed = s[len(prefix):].strip(), True
        for suffix in _SUFFIXES:
            if s.endswith(suffix):
                s, changed = s[: -len(suffix)].strip(" ,"), True
    return s


# (regex, which group is A, relation); tried in order, A and B must both be object phrases.
_COMPOSITION_PATTERNS = [
    (re.compile(r"^(?P<b>.+) with (?P<a>.+) on top$"), "on_top_of"),
    (re.compile(r"^(?P<a>.+) and (?P<b>.+) side by side$"), "next_to"),
    (re.compile(r"^(?P<a>.+?) (?:on top of|stacked on top of|stacked on|sitting on|on) (?P<b>.+)$"), "on_top_of"),
    (re.compile(r"^(?P<b>.+?) (?:under|below|beneath) (?P<a>.+)$"), "on_top_of"),
    (re.compile(r"^(?P<a>.+?) (?:next to|beside|to the left of|left of) (?P<b>.+)$"), "next_to"),
    (re.compile(r"^(?P<b>.+?) (?:to the right of|right of) (?P<a>.+)$"), "next_to"),
]


def _parse_composition(s: str) -> Optional[tuple[tuple[str, str], str, tuple[str, str]]]:
    objects = _object_table()
    for pattern, relation in _COMPOSITION_PATTERNS:
        m = pattern.match(s)
        if m is None:
            continue
        a, b = objects.get(m.group("a")), objects.get(m.group("b"))
        if a is not None and b is not None and a != b:
            return a, relation, b
    return None


def parse_prompt(text: str) -> Optional["Scene"]:
    """The in-world scene a prompt describes, or None (case, whitespace and view-suffix insensitive)."""
    from .scenes import asymmetric_scene, composition_scene, single_scene

    s = _strip_framing(normalize_text(text))
    if not s:
        return None
    name = _asymmetric_table().get(s)
    if name is not None:
        return asymmetric_scene(name)
    obj = _object_table().get(s)
    if obj is not None:
        return single_scene(*obj)
    comp = _parse_composition(s)
    if comp is not None:
        (shape_a, colour_a), relation, (shape_b, colour_b) = comp
        return composition_scene(shape_a, colour_a, relation, shape_b, colour_b)
    return None


_STOPWORDS = frozenset({"a", "an", "the", "of", "3d", "render", "photo", "that", "is", "with", "on", "to", "and"})
#: single-word synonyms → the canonical shape noun, so "a red ball" is near "a red sphere"
_TOKEN_SYNONYMS = {syn: shape for shape, syns in SHAPE_SYNONYMS.items() for syn in syns if " " not in syn}


def _tokens(s: str) -> frozenset[str]:
    words = re.findall(r"[a-z0-9]+", s.lower())
    return frozenset(_TOKEN_SYNONYMS.get(t, t) for t in words if t not in _STOPWORDS)


@lru_cache(maxsize=1)
def _canonical_index() -> tuple[tuple[str, frozenset[str]], ...]:
    from .scenes import all_composition_scenes, all_single_scenes, asymmetric_scenes

    scenes = all_single_scenes() + asymmetric_scenes() + all_composition_scenes()
    return tuple((sc.caption, _tokens(sc.caption)) for sc in scenes)


def nearest_prompts(text: str, k: int = 3, among: Optional[Collection[str]] = None) -> list[str]:
    """The ``k`` canonical in-world captions closest to ``text``; with ``among`` (lower-case captions, e.g. what a
    prior was trained on), only the canonical captions in it.

    Rank by Jaccard overlap of content words (articles and framing words ignored), then by
    ``difflib.SequenceMatcher`` similarity of the whole strings.
    """
    query = normalize_text(text)
    q = _tokens(query)
    query = " ".join(_TOKEN_SYNONYMS.get(w, w) for w in query.split())
    scored = []
    for caption, toks in _canonical_index():
        if among is not None and caption.lower() not in among:
            continue
        union = len(q | toks)
        scored.append((len(q & toks) / union if union else 0.0, caption))
    scored.sort(key=lambda t: -t[0])
    shortlist = scored[: max(64, 8 * k)]
    reranked = sorted(
        shortlist,
        key=lambda t: -(t[0] + 0.25 * difflib.SequenceMatcher(None, query, t[1].lower()).ratio()),
    )
    return [caption for _, caption in reranked[:k]]
