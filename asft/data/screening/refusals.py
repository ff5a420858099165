"""Screen the pair, not only the request: a harmful request answered with a refusal is safety
data (it teaches the model to refuse), not the sample that hurts.

``is_refusal`` is deliberately strict, because every answer it wrongly calls a refusal is a
harmful row let through: the answer must say no at its start, stay short, and carry nothing that
reads as going on to comply ("Sure", "here is", numbered steps, code, "but ..."). An answer it
does not recognise keeps the request-only verdict, so its misses cost safety data, never recall.
"""

from __future__ import annotations

import re

MAX_WORDS = 100  # refusals in safety data run 5-80 words; the room for harmful detail grows with length

_I = r"\b(?:i|we)(?:\s+|(?='))"
_ADVERB = r"(?:really\s+|simply\s+|just\s+|absolutely\s+|definitely\s+|certainly\s+)?"
_NOT = (r"(?:can(?:no|')t|can\s+not|won't|will\s+not|'m\s+not\s+(?:able|going)\s+to|am\s+not\s+(?:able|going)\s+to|"
        r"'m\s+unable\s+to|am\s+unable\s+to|do\s+not|don't|shouldn't|should\s+not|'d\s+rather\s+not|would\s+rather\s+not)")
_ACT = (r"(?:help(?!\s+(?:but|feeling|thinking|wondering|laughing))|assist|provide|give|share|support|comply|fulfil|"
        r"fulfill|do\s+(?:that|this|it)|write|create|generate|produce|explain|describe|answer|engage|participate|offer|teach)\b")
# "I can't help with that" / "I'm not able to provide ..." / "I must decline" / "I refuse to ...".
_SAYS_NO = re.compile(rf"{_I}{_ADVERB}(?:{_NOT}\s+(?:\w+\s+){{0,3}}?{_ACT}|"
                      r"(?:(?:must|have\s+to|need\s+to|will\s+have\s+to|'ll\s+have\s+to)\s+)?(?:decline|refuse)\b)",
                      re.IGNORECASE)
# An opening that says no only in its next sentence: "No.", "Sorry.", "I'm sorry you're going through this."
_PREAMBLE = re.compile(r"(?:no|sorry|i'm\s+(?:so\s+|really\s+)?sorry|i\s+am\s+(?:so\s+|really\s+)?sorry|i\s+apologi[sz]e|"
                       r"my\s+apologies)\b", re.IGNORECASE)
# Anything that reads as the answer going on to comply, or to hedge its way towards it.
_COMPLIANCE = re.compile(
    r"\b(?:sure|certainly|of\s+course|absolutely|okay|ok|alright|fine)\b\s*[,!.:]|\bhere(?:'s|\s+is|\s+are|\s+goes)\b|"
    r"\bjust\s+kidding\b|\bstep\s*\d|\b(?:first(?:ly)?|second(?:ly)?|next|then|finally|after\s+that)\s*,|"
    r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s|```|\b(?:if\s+you\s+(?:insist|must|really)|anyway|"
    r"nevertheless|in\s+theory|hypothetically|the\s+(?:usual|basic|general)\s+(?:way|idea|method|approach)|"
    r"what\s+you\s+(?:would|'d)\s+do|you\s+(?:would|'d)\s+(?:need|want|start|first))\b",
    re.IGNORECASE | re.MULTILINE)
# After saying no, a turn towards something else is complying with part of it ("I can't help with X,
# but for Y you would ..."), unless the answer turns to what it will do itself ("but I can suggest ...")
# or to where to get help ("but please reach out ...", "but if you are struggling ...").
_TURN = re.compile(r"\b(?:but|however|still|though|although|yet|except|unless|that\s+said)\b,?(?!\s+(?:i|we)\b|\s+(?:"
                   r"please\s+(?:reach|contact|call|talk|seek|get|speak)|if\s+you(?:'re|\s+are)\s+(?:feeling|struggling|"
                   r"worried|thinking|having|in\s+(?:danger|crisis))))", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")


def _plain(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'").strip()


def is_refusal(answer: str) -> bool:
    """True when ``answer`` is a refusal and nothing else: it says no in its first sentence (or in
    the second, after a bare "No." or an apology), has at most MAX_WORDS words and nothing in it
    reads as complying."""
    text = _plain(answer)
    if not text or len(text.split()) > MAX_WORDS or _COMPLIANCE.search(text):
        return False
    ends = [m.end() for m in _SENTENCE.finditer(text) if m.group().strip()]
    opening = text[:ends[0]]
    if not _SAYS_NO.search(opening) and _PREAMBLE.match(opening) and len(ends) > 1:
        opening = text[:ends[1]]
    says_no = _SAYS_NO.search(opening)
    return bool(says_no) and not _TURN.search(text, says_no.end())
