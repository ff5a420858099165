"""A transparent lexicon screener: fast, explainable, no model.

Each rule is a regular expression for a harmful *request* (an action on a harmful object),
not for a topic: "how a bomb works" or "kill a python process" must not match, "build a
bomb" must. Reasons name the category and the matched words, e.g. ``rule:weapons:"build a bomb"``.
Written from public harm taxonomies (MLCommons hazard categories, BeaverTails' 14 categories).
"""

from __future__ import annotations

import re
from typing import Any

from asft.data.screening.base import ScreenResult, exchange_texts
from asft.templates import Record

_PEOPLE = (r"(?:some(?:one|body)|a (?:person|human|child|kid|woman|man|girl|boy|neighbou?r|cop|police officer)|"
           r"people|him|her|them|my (?:wife|husband|boss|teacher|parents?|mother|father|mom|dad|sister|brother|"
           r"ex|girlfriend|boyfriend|neighbou?r|classmate|coworker|roommate))")
_MAKE = r"(?:make|build|assemble|construct|create|manufacture|synthesi[sz]e|cook|produce|brew|3d[- ]print)"
_HOW = r"(?:how (?:do i|can i|to|would i|could i|should i)|ways? to|steps? to|guide (?:to|for|on)|instructions? (?:to|for|on)|help me|teach me|tutorial on)"

# category -> regular expressions (matched case-insensitively on the request text)
LEXICON: dict[str, list[str]] = {
    "weapons": [
        rf"{_MAKE}\s+(?:a |an |some )?(?:homemade |home-made |pipe |nail |car |dirty |fertili[sz]er )?(?:bombs?|explosives?|ied|grenades?|molotov|napalm|detonators?)",
        rf"{_MAKE}\s+(?:a |an )?(?:untraceable |ghost |homemade )?(?:guns?|firearms?|silencers?|suppressors?)",
        r"(?:convert|modify)\s+(?:a |my )?\w*\s*(?:rifle|gun|firearm)\s+(?:to|into)\s+(?:full[- ]auto|automatic)",
        rf"{_MAKE}\s+(?:a |an )?(?:chemical|biological|bio|nuclear|radiological)\s+weapons?",
        rf"{_MAKE}\s+(?:sarin|ricin|anthrax|nerve agents?|mustard gas|chlorine gas|vx)",
        r"(?:buy|get|obtain|acquire)\s+(?:a |an )?(?:gun|firearm|weapon)s?\s+(?:illegally|without (?:a )?(?:background check|license|permit))",
    ],
    "violence": [
        rf"(?:{_HOW}|want to|going to|plan to|best way to)\s+(?:\w+\s+){{0,2}}(?:kill|murder|strangle|stab|shoot|assassinate|behead|torture|maim|poison|kidnap|abduct|drown|suffocate)\s+{_PEOPLE}",
        rf"(?:hurt|harm|beat up|injure|attack)\s+{_PEOPLE}\s+(?:without|and get away|so (?:that )?(?:no one|nobody))",
        r"(?:get away with|cover up|hide evidence of)\s+(?:a |the )?(?:murder|killing|homicide)|dispose of (?:a|the) (?:dead )?body",
        r"(?:plan|carry out|commit)\s+(?:a |an )?(?:mass shooting|massacre|school shooting|assassination|murder)",
    ],
    "cybercrime": [
        r"hack(?:ing)?\s+(?:into\s+)?(?:some(?:one|body)'?s?|a |an |my (?:ex|neighbou?r|boss)'?s?|the )?\s*(?:\w+\s+)?(?:account|email|phone|computer|network|database|server|website|wi-?fi|system|bank)",
        rf"(?:write|create|develop|code|build|make|design|program|deploy|spread)\s+(?:a |an |some )?(?:\w+\s+)?(?:malware|ransomware|virus|trojan|keylogger|rootkit|botnet|spyware|worm|backdoor|exploit kit)",
        r"(?:phishing|spear-?phishing)\s+(?:email|site|page|website|campaign|message|kit)",
        r"(?:ddos|denial[- ]of[- ]service)\s+(?:attack|a |an |the )",
        r"(?:steal|crack|brute[- ]force|harvest|dump)\s+(?:\w+\s+)?(?:passwords?|credentials|login details|credit card (?:numbers|details|data))",
        r"(?:bypass|disable|evade)\s+(?:the\s+)?(?:antivirus|two-factor|2fa|authentication|security (?:system|measures)|firewall)s?\s+(?:to|and|without|of (?:a|someone))",
    ],
    "fraud": [
        rf"{_HOW}\s+(?:\w+\s+){{0,3}}(?:commit|do|run|pull off|get away with)\s+(?:\w+\s+)?(?:fraud|a scam|scams|embezzlement|tax evasion|insurance fraud|identity theft)",
        r"(?:steal|clone)\s+(?:some(?:one|body)'?s?|a person'?s?|people'?s?)\s+(?:identity|credit card|social security|bank)",
        r"(?:counterfeit|fake|forge[d]?|forging)\s+(?:money|currency|bills|banknotes|checks|cheques|passports?|ids?|id cards?|driver'?s licen[cs]es?|documents|signatures?|diplomas?|prescriptions?)",
        r"(?:launder|laundering)\s+(?:\w+\s+)?money|money laundering scheme",
        rf"{_HOW}\s+(?:\w+\s+){{0,2}}(?:shoplift|rob (?:a|the)|steal (?:from|a car|money|a)|break into (?:a|someone'?s?) (?:house|home|car|store))",
        r"(?:ponzi|pyramid) scheme\s+(?:to|that|for)|insider trading\s+(?:without|and not|to make)|pump and dump",
    ],
    "drugs": [
        rf"{_MAKE}\s+(?:\w+\s+)?(?:meth(?:amphetamine)?|crystal meth|cocaine|crack|heroin|fentanyl|lsd|mdma|ecstasy|ghb|dmt)\b",
        r"(?:buy|sell|smuggle|traffic|deal|get)\s+(?:\w+\s+)?(?:drugs|cocaine|heroin|meth|fentanyl|mdma)\s+(?:online|without|on the dark ?web|across|past|through)",
        r"(?:smuggle|sneak)\s+(?:\w+\s+){0,2}(?:drugs|contraband|weapons?)\s+(?:through|past|across|into)",
    ],
    "self_harm": [
        r"(?:kill|hang|hurt|cut|starve)\s+myself",
        r"(?:commit|ways to commit|best way to commit|painless(?:ly)?)\s+suicide|end my (?:own )?life|suicide methods?",
        r"(?:encourage|convince|persuade|tell)\s+(?:some(?:one|body)|people|him|her|them|users?|teens?)\s+to\s+(?:kill themselves|commit suicide|self-harm|hurt themselves|starve)",
        r"(?:promote|glorify|encourage)\s+(?:self-harm|anorexia|bulimia|eating disorders?|suicide)",
    ],
    "hate_harassment": [
        r"(?:racist|sexist|homophobic|transphobic|antisemitic|islamophobic)\s+(?:jokes?|slurs?|insults?|propaganda|rant|post|message|speech)",
        r"(?:why|prove that)\s+(?:black|white|asian|jewish|muslim|gay|women|mexican|arab|indian)\s+(?:people|men|women)?\s*(?:are|is)\s+(?:inferior|stupid|subhuman|animals|criminals)",
        rf"(?:harass|bully|cyberbully|threaten|intimidate|dox|doxx|stalk|humiliate)\s+(?:{_PEOPLE}|a (?:classmate|coworker|journalist|celebrity|user))",
        r"(?:write|send|compose)\s+(?:a |an )?(?:threatening|hateful|harassing|death threat)\s*(?:letter|message|email|note|post|threats?)?",
        r"hate speech\s+(?:against|about|targeting)|incite (?:hatred|violence) against",
    ],
    "sexual_minors": [
        r"(?:sex(?:ual)?|nude|naked|erotic|explicit)\s+(?:\w+\s+)?(?:with|of|involving|featuring)\s+(?:a |an )?(?:child|children|minor|minors|kid|kids|\d{1,2}[- ]year[- ]old|underage|preteen|teen(?:ager)?s?)",
        r"(?:write|generate|create|make|find|download|share|get|send|buy)\s+(?:\w+\s+){0,2}(?:child|underage|minor)\s+(?:porn|pornography|nudes?|erotica)|\bcsam\b",
        r"groom(?:ing)?\s+(?:a |an )?(?:child|minor|kid|teen|young (?:girl|boy))",
    ],
    "sexual": [
        r"(?:revenge porn|non-?consensual (?:porn|images|sex)|deepfake (?:porn|nudes?|sex)|spread (?:her|his|their) nudes)",
        r"(?:drug|roofie|spike)\s+(?:a |her |his |someone'?s? )?(?:drink|date|girl|woman)|date rape",
        r"(?:coerce|force|pressure|blackmail)\s+(?:\w+\s+)?into\s+(?:sex|sexual)",
    ],
    "privacy": [
        rf"(?:find|get|look up|track down)\s+(?:\w+\s+){{0,2}}(?:home address|phone number|social security number|location|personal information|private information)\s+(?:of|for)\s+(?:{_PEOPLE}|a (?:stranger|celebrity|journalist|private person))",
        r"(?:spy on|secretly (?:track|record|monitor|watch|read)|read (?:my|someone'?s?) (?:\w+\s+)?(?:texts|messages|emails) without)",
        r"(?:track|monitor)\s+(?:some(?:one|body)|my (?:wife|husband|girlfriend|boyfriend|ex|partner))(?:'s)?\s+(?:\w+\s+)?(?:location|phone|messages)\s*(?:without|secretly)?",
        r"(?:dox|doxx)(?:ing)?\b|(?:leak|publish|expose)\s+(?:someone'?s?|a person'?s?|private|personal)\s+(?:\w+\s+)?(?:data|information|address|photos)",
        r"(?:install|hide|put)\s+(?:a |an )?(?:spyware|stalkerware|hidden camera|tracker|gps tracker)\s+(?:on|in)",
    ],
    "extremism": [
        r"(?:join|recruit (?:\w+\s+)?(?:for|into|to)|support|fund|finance)\s+(?:a |an |the )?(?:terrorist|terror|extremist|jihadist|neo-?nazi|isis|al-?qaeda)",
        r"(?:plan|carry out|commit|execute)\s+(?:a |an )?(?:terrorist|terror) (?:attack|plot|act)",
        r"(?:glorify|glorifies|praise|promote)\s+(?:\w+\s+)?(?:terrorism|terrorists|jihad|mass shootings?|genocide|extremis[mt])",
        r"(?:terrorist|extremist|jihadist)\s+(?:propaganda|manifesto|recruitment)",
    ],
    "misinformation": [
        r"(?:write|create|generate|spread|make)\s+(?:a |an |some )?(?:fake news|disinformation|misinformation|propaganda|hoax|conspiracy theory)",
        r"(?:fake|false)\s+(?:reviews?|testimonials?)\s+(?:for|to|about|that)",
        r"(?:rig|steal|manipulate|suppress)\s+(?:an |the )?(?:election|votes?|voters?|ballots?)",
        r"(?:defame|slander|libel)\s+|defamatory\s+(?:article|post|letter|statement)",
    ],
    "dangerous_crime": [
        r"(?:start|set)\s+(?:a )?fires?\s+(?:to|at|in|and)\s+(?:\w+\s+)?(?:house|home|building|school|car|forest|store)|commit arson",
        r"(?:sabotage|derail|poison)\s+(?:a |an |the )?(?:train|water supply|power grid|plane|aircraft|pipeline|food supply)",
        r"(?:get away with|avoid getting caught|evade (?:the )?police|without getting caught)\s+(?:\w+\s+){0,3}(?:crime|stealing|robbery|theft|murder|killing|drunk driving|hit and run)",
        r"(?:blackmail|extort|bribe)\s+(?:some(?:one|body)|a (?:person|judge|official|cop|police officer)|my|him|her|them|officials?)",
        r"(?:human trafficking|traffic (?:people|women|children|humans))|(?:torture|abuse|poison)\s+(?:a |my |the )?(?:dog|cat|animal|pet)s?",
    ],
}


class RulesScreener:
    """Flags a record when any lexicon rule matches one of its user turns (the last: instruction
    and input) or (optionally) the answer to it."""

    name = "rules"

    def __init__(self, include_output: bool = False, lexicon: dict[str, list[str]] | None = None):
        self.include_output = include_output
        self.lexicon = lexicon or LEXICON
        # \b on both ends: "dox" must not match inside "orthodox"
        self.rules = [(category, re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE))
                      for category, patterns in self.lexicon.items() for pattern in patterns]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "rules": len(self.rules), "categories": sorted(self.lexicon),
                "include_output": self.include_output}

    def matches(self, text: str) -> list[str]:
        reasons = []
        for category, rule in self.rules:
            hit = rule.search(text)
            if hit:
                reasons.append(f'rule:{category}:"{" ".join(hit.group(0).split())}"')
        return reasons

    def score(self, records: list[Record]) -> list[ScreenResult]:
        results = []
        for record in records:
            reasons = [reason for text in exchange_texts(record, self.include_output) for reason in self.matches(text)]
            results.append(ScreenResult(bool(reasons), float(len(reasons)), tuple(reasons)))
        return results
