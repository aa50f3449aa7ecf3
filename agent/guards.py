"""Harmful-request guard, run before retrieval: plain rules, no model.

A 135M model cannot be trusted to judge intent, and a support assistant sees mostly harmless
questions, so the guard is a small set of readable patterns grouped by category. Each rule pairs
a harmful *object* (malware, a bomb, someone's identity, a person as the target of violence) with
the *intent* that makes it harmful (making it, using it on someone, hiding it). Words that have an
ordinary support meaning on their own ("kill a frozen app", "delete my account", "remove a virus",
"hack" as in shortcut) only count together with such a target, which keeps over-refusal of
support questions near zero. The rules were written from categories of harm, not from any
particular evaluation file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Verbs that express producing or carrying out something.
_MAKE = (
    r"(?:make|making|build|building|create|creating|write|writing|develop|developing|design|"
    r"designing|code|program|produce|producing|generate|generating|synthesi[sz]e|manufactur\w*|"
    r"construct\w*|assemble|release|releasing|spread|spreading|deploy\w*|distribut\w*|craft\w*|"
    r"instruct\w*|explain|teach|show|give|provide|outline|describe|plan|tutorial|guide|"
    r"step[- ]by[- ]step|how to|how do i|how can i|ways? to)"
)
# Narrower: producing something (not asking how something works).
_CREATE = (
    r"(?:make|making|build|building|create|creating|write|writing|develop|developing|design|"
    r"designing|code|coding|program|produce|producing|generate|generating|synthesi[sz]e|"
    r"manufactur\w*|construct\w*|assemble|release|releasing|spread|spreading|deploy\w*|"
    r"distribut\w*|craft\w*|script|bot|algorithm|tool|app)"
)
# Asking for protection from a harm (a victim's question) rather than for the harm itself.
_DEFENSIVE = re.compile(
    r"\b(?:remove|removing|get rid of|report|reporting|protect\w*|prevent\w*|detect|detecting|"
    r"recover\w*|scan\w* for|clean\w*|was (?:hacked|stolen|scammed)|been (?:hacked|scammed)|"
    r"victim of|spot|recogni[sz]e|avoid (?:being|getting))\b",
    re.IGNORECASE,
)
# A human target (as opposed to an app, a process, a setting or an account of one's own).
_PERSON = (
    r"(?:someone|somebody|a person|people|person|persons|individuals?|humans?|my (?:wife|husband|"
    r"boss|neighbou?r|partner|friend|teacher|coworker|colleague|ex|family|kid|child|mother|father)|"
    r"him|her|them|children|kids|a child|civilians|crowds?|officials?|politicians?|a politician|"
    r"the president|public figures?|celebrit(?:y|ies)|(?:a |an )?(?:ethnic|racial|religious) "
    r"(?:group|minorit(?:y|ies))|minorit(?:y|ies)|immigrants?|animals?|pets?|victims?|users?|"
    r"employees?|customers?|students?|others)"
)


@dataclass(frozen=True)
class GuardResult:
    """The guard's verdict.

    Attributes:
        harmful: Whether the request should be refused.
        category: Which rule group matched (`"weapons"`, `"malware"`, ...), or `None`.
        rule: The pattern that matched, for logs and tests.
    """

    harmful: bool
    category: str | None = None
    rule: str | None = None


_RULES: dict[str, list[str]] = {
    "weapons": [
        r"\b(?:bombs?|explosives?|ied|pipe ?bombs?|grenades?|molotov|detonators?|napalm|"
        r"nerve agents?|sarin|ricin|anthrax|bioweapons?|chemical weapons?|biological weapons?|"
        r"dirty bombs?|nuclear weapons?)\b",
        rf"\b{_MAKE}\b.{{0,60}}\b(?:weapons?|firearms?|guns?|silencers?|ammunition|poisons?|"
        r"toxins?|deadly|lethal)\b",
        r"\b(?:acquire|buy|obtain|purchase|sell|smuggl\w*|traffick?\w*)\b.{0,40}\b(?:illegal(?:ly)?"
        r"|unregistered|untraceable)\b.{0,30}\b(?:weapons?|firearms?|guns?)\b",
        r"\b(?:untraceable|illegal|unregistered|3d[- ]printed)\s+(?:weapons?|firearms?|guns?)\b",
    ],
    "violence": [
        rf"\b(?:kill|murder|assassinat\w*|poison\w*|strangl\w*|kidnap\w*|abduct\w*|torture|"
        rf"maim|attack|assault|stab|shoot|hurt|harm|injur\w*|beat up|physically harm)\b.{{0,40}}"
        rf"\b{_PERSON}\b",
        r"\b(?:terroris[mt]s?|terror attacks?|mass shootings?|massacres?|genocide|"
        r"ethnic cleansing|school shootings?|hijack\w* (?:a |an )?(?:plane|aircraft|airplane|flight))"
        r"\b",
        r"\b(?:incit\w*|encourag\w*|promot\w*|glorif\w*|advocat\w*)\b.{0,40}\b(?:violence|violent|"
        r"riots?|terror\w*|hatred|murder|war crimes?|extremis\w*|harm|self[- ]harm)\b",
        r"\bget away with\b.{0,20}\b(?:murder|killing|crime|it)\b",
        r"\b(?:sabotag\w*|derail\w*|disrupt\w*|contaminat\w*|tamper\w* with)\b.{0,50}\b(?:trains?|"
        r"transportation|power grids?|water (?:supply|supplies)|food supply|critical infrastructure|"
        r"(?:a |the )?city'?s?)\b",
    ],
    "self-harm": [
        r"\b(?:suicide|kill (?:myself|yourself|themselves|oneself)|end (?:my|your|their) (?:own )?"
        r"life|self[- ]harm\w*|cut (?:myself|yourself)|hurt (?:myself|yourself))\b",
        r"\b(?:anorexi\w*|bulimi\w*|eating disorders?|starv\w* (?:myself|yourself))\b",
    ],
    "malware": [
        r"\b(?:malware|ransomware|spyware|keyloggers?|rootkits?|trojans?|botnets?|worms? that|"
        r"computer (?:virus|viruses|worms?)|zero[- ]day exploits?|ddos|denial[- ]of[- ]service)\b",
        rf"\b{_CREATE}\b.{{0,40}}\b(?:virus|viruses|exploits?|spam\w*)\b",
        r"\b(?:hack\w*|break|breaking|crack\w*|infiltrat\w*|gain (?:unauthori[sz]ed )?access)"
        r"\s+(?:in)?to\b.{0,40}\b(?:networks?|systems?|databases?|servers?|accounts?|computers?|"
        r"websites?|devices?|email|phones?|webcams?|cameras?|banks?|government|grid)\b",
        r"\bhack(?:ing|s)?\s+(?:a |an |the |someone'?s? |into )?(?:government|bank|corporate|"
        r"secure|social media|email|network|voting|election|hospital|database|webcam|phone)\b",
        r"\b(?:hijack\w*|take over|takeover|control)\b.{0,30}\b(?:self[- ]driving|autonomous)?"
        r"\s*(?:cars?|vehicles?|drones?|planes?|aircraft)\b.{0,40}\b(?:crash\w*|collid\w*|risk)\b",
        r"\b(?:hijack\w*|take over|takeover|control)\b.{0,30}\b(?:someone'?s?|users?'?|"
        r"(?:a |the )?victim'?s?|their)\b.{0,20}\b(?:webcam|camera|computer|device|account|car)\b",
        r"\b(?:exploit\w*)\b.{0,30}\b(?:vulnerabilit\w*|security (?:holes?|flaws?))\b",
        r"\b(?:bypass\w*|evad\w*|circumvent\w*|defeat\w*)\b.{0,30}\b(?:antivirus|"
        r"anti-virus|security (?:measures|systems?|software|controls)|firewalls?|detection|"
        r"drm|digital rights management|authentication|two[- ]factor|captchas?)\b",
        r"\b(?:crack|brute[- ]?forc\w*|steal\w*)\b.{0,20}\bpasswords?\b",
        r"\b(?:phishing|smishing|credential stuffing|sql injection attack)\b",
    ],
    "fraud": [
        r"\b(?:steal\w*|stole|theft of|exfiltrat\w*|harvest\w*)\b.{0,50}\b(?:information|data|"
        r"identit\w*|credit cards?|money|funds|secrets|credentials|personal|confidential|"
        r"sensitive|intellectual property|trade secrets)\b",
        r"\bidentity theft\b",
        r"\b(?:steal\w*|stole|hot[- ]?wir\w*|carjack\w*)\b.{0,20}\b(?:cars?|vehicles?|from|"
        r"goods|property)\b",
        r"\b(?:illegally|unlawfully|trespass\w*)\b",
        r"\b(?:trick\w*|deceiv\w*|lur\w*|coerc\w*)\b.{0,40}\b(?:into|reveal\w*|giving|"
        r"handing)\b",
        r"\b(?:defam\w*|slander\w*|libel\w*|smear campaigns?)\b",
        r"\b(?:damag\w*|ruin\w*|sabotag\w*|destroy\w*)\b.{0,40}\breputations?\b",
        r"\b(?:financial damage|economic instability|crash the (?:market|economy))\b",
        r"\b(?:mislead\w*|deceptive)\b.{0,40}\b(?:consumers?|customers?|people|public|voters?|"
        r"investors?|readers?|safety|health)\b",
        r"\bconceal\w*\b.{0,30}\b(?:crim\w*|evidence|illegal|bodies|body)\b",
        r"\b(?:scam\w*|defraud\w*|fraud\w*|swindl\w*|con artists?|ponzi|pyramid scheme|"
        r"money laundering|launder\w* money|insider trading|tax evasion|evade taxes|"
        r"counterfeit\w*|forg(?:e|ed|ing|ery)\b)",
        r"\bmanipulat\w*\b.{0,30}\b(?:stock|market|prices?|elections?|people|someone|"
        r"(?:a |the )?vulnerable)\b",
        r"\bfake\b.{0,20}\b(?:news|reviews?|identit\w*|ids?|passports?|documents?|"
        r"accounts?|charit\w*|invoices?|profiles?|degrees?|diplomas?|prescriptions?|"
        r"medical records?)\b",
        r"\b(?:false|fabricated|misleading) (?:information|claims?|statements?|news|"
        r"accusations?|reviews?)\b",
        r"\b(?:misinformation|disinformation|propaganda|hoax\w*|conspiracy theor\w*)\b",
        r"\bcheat\w*\b.{0,30}\b(?:exams?|tests?|on (?:my |your |their |a )?(?:wife|husband|"
        r"partner|spouse|significant other|girlfriend|boyfriend)|taxes|casinos?|gambling)\b",
        r"\b(?:shoplift\w*|pickpocket\w*|burglar\w*|rob(?:bing|bery)? (?:a |an |the )?"
        r"(?:bank|store|house|person|someone)|break into (?:a |an |the |someone'?s? )?"
        r"(?:house|home|car|apartment|store))\b",
        r"\bwithout (?:their|his|her|the (?:user|owner|victim)'?s?|anyone'?s?|them) "
        r"(?:knowledge|knowing|consent|permission|noticing)\b",
        r"\b(?:evad\w*|avoid\w*|escap\w*) (?:the )?(?:police|law enforcement|arrest|"
        r"detection|being caught|getting caught|authorities)\b",
        r"\bwithout (?:getting|being) caught\b",
        r"\b(?:blackmail\w*|extort\w*|bribe\w*|brib(?:ing|ery))\b",
        r"\bvandali[sz]\w*\b",
        r"\bpirat\w* (?:software|movies?|music|content)|\billegally download\w*\b",
    ],
    "drugs": [
        r"\b(?:methamphetamine|meth|cocaine|heroin|fentanyl|lsd|mdma|ecstasy|crack cocaine|"
        r"opioids?|narcotics?)\b",
        r"\b(?:illegal|illicit|controlled|recreational) (?:drugs?|substances?)\b",
        rf"\b{_MAKE}\b.{{0,30}}\bdrugs?\b",
        r"\b(?:drunk|drugged|impaired) driving\b|\bdrive (?:drunk|while (?:drunk|intoxicated|high))\b",
    ],
    "hate-harassment": [
        r"\b(?:hate speech|racis[mt]\w*|xenophob\w*|homophob\w*|antisemit\w*|white supremac\w*|"
        r"nazi\w*|ethnic slurs?|slurs?)\b",
        r"\b(?:harass\w*|stalk\w*|cyberbull\w*|bully\w*|doxx?\w*|intimidat\w*|threaten\w*|"
        r"humiliat\w*|sextort\w*|revenge porn)\b",
        r"\b(?:discriminat\w*|dehumani[sz]\w*|demean\w*)\b.{0,40}\b(?:against|people|groups?|"
        r"minorit\w*|women|race|religion|disabilit\w*)\b",
        r"\b(?:child (?:porn\w*|sexual|abuse)|sexual(?:ly)? (?:exploit\w*|abus\w*)|grooming|"
        r"human trafficking|sex trafficking|groom\w* (?:a |other )?(?:minors?|child\w*|kids?|"
        r"users?|teens?|teenagers?))\b",
    ],
    "dangerous": [
        r"\b(?:dangerous|risky|reckless|illegal|unethical|harmful) (?:activit\w*|behaviou?rs?|"
        r"stunts?|challenges?|acts?|actions?)\b",
        r"\b(?:commit\w*|plan\w*|carry out|get away with)\b.{0,20}\b(?:crimes?|felon\w*|"
        r"arson|a robbery|a heist|fraud|murder|violence)\b",
        r"\b(?:unsafe|without a license|unlicensed) (?:surgery|medical procedures?)\b",
    ],
}

# Categories where a victim's or defender's question mentions the harm by name.
_DEFENDABLE = {"malware", "fraud"}

_COMPILED: list[tuple[str, re.Pattern[str]]] = [
    (category, re.compile(pattern, re.IGNORECASE)) for category, patterns in _RULES.items()
    for pattern in patterns
]


def classify_request(text: str) -> GuardResult:
    """Decide whether a request is harmful and should be refused before retrieval.

    Args:
        text: The user's request as typed.

    Returns:
        A `GuardResult`; `harmful` is `False` for ordinary support questions.
    """
    normalised = re.sub(r"\s+", " ", text.replace("’", "'")).strip()
    defensive = bool(_DEFENSIVE.search(normalised)) and not re.search(
        rf"\b{_CREATE}\b", normalised, re.IGNORECASE
    )
    for category, pattern in _COMPILED:
        if defensive and category in _DEFENDABLE:
            continue
        if pattern.search(normalised):
            return GuardResult(True, category, pattern.pattern)
    return GuardResult(False)


def is_harmful(text: str) -> bool:
    """Shorthand for `classify_request(text).harmful`."""
    return classify_request(text).harmful
