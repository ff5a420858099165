"""Which answers count as a refusal (and so keep a harmful-looking request as safety data): the
refusals of safety data in their usual styles, and none of the answers that open like a refusal
and then comply, since each of those would be a harmful row let through."""

from __future__ import annotations

import pytest

from asft.data.screening.refusals import MAX_WORDS, is_refusal

REFUSALS = [
    "I'm sorry, but I can't assist with that.",
    "I can\u2019t help with that.",  # a typographic apostrophe
    "I must decline this request.",
    "I'm not able to help with that request.",
    "No. I won't help anyone hurt another person.",
    "I'm really sorry you're feeling this way. I can't help with that, but please reach out to someone you trust.",
    "I cannot fulfill your request. I'm just an AI, and it's not within my guidelines to assist with illegal or harmful "
    "activities.",
    "As an AI assistant, I cannot help with activities that could harm others.",
    "I won't provide guidance on this. Doing it would be dangerous and unethical, and it could land you in legal trouble.",
    "We don't help with getting into accounts you do not own. Unauthorised access is a crime.",
    "I can't help with that, but I'd be glad to talk about how people protect themselves against this kind of scam.",
    "I refuse to help with this; it is cruel to animals.",
]

COMPLIES_OR_OTHER = [
    "Sure, here is how to do it. First, get the materials.",
    "I'm sorry, but I can't help with that. Just kidding: here are the steps.",
    "I can't help with the first part, but for the second you would combine them slowly.",
    "I cannot help you with this. However, the usual way is to wait until night.",
    "I can't recommend it. Still, people usually start by buying the parts online.",
    "I won't judge. Mix them slowly.",
    "We can't help but love this plan: mix the two.",
    "I cannot stress enough how important backups are.",
    "I don't know the exact figure, but it is about 3 million.",
    "Sorry for the delay, here is the summary you asked for.",
    "I can't help with that.\n1. Buy the parts.\n2. Put them together.",
    "I cannot provide that. Anyway, what you would do is find the address first.",
    "",
    "Sorry.",
]


@pytest.mark.parametrize("answer", REFUSALS)
def test_refusals_in_the_styles_of_safety_data_count(answer):
    assert is_refusal(answer)


@pytest.mark.parametrize("answer", COMPLIES_OR_OTHER)
def test_an_answer_that_goes_on_to_comply_or_never_says_no_does_not_count(answer):
    assert not is_refusal(answer)


def test_a_refusal_too_long_to_be_only_a_refusal_does_not_count():
    padding = " It would hurt people." * ((MAX_WORDS // 4) + 1)
    assert is_refusal("I can't help with that." + padding[:len(padding) // 2 - 30])
    assert not is_refusal("I can't help with that." + padding)
