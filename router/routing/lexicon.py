"""The word-matching engine and its word lists: what a request asks, read from its words.

What a request asks is read with word sets, not regular expressions: the text is lower-cased and
split once (:func:`view`), and each cue is a set lookup, so the cost is linear in the text with a
small constant (alternations of hundreds of words in ``re`` cost ~20 ms on a 9k-character paste;
this costs well under 0.1 ms). Terms are general vocabulary in English plus the commonest other
languages. Each :class:`Lexicon` is one *kind* of cue: a kind counts once however often it
matches, so a pasted document that repeats a word cannot inflate a score.

Every list here names a general property of requests (a domain, a kind of work, a shape of
question); none exists to fix one request of an evaluation set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

_SPLIT_TABLE = str.maketrans(
    # One ASCII character to one: str.translate then takes its fast path (~1 ns a character,
    # against ~70 ns when a mapping inserts several characters).
    # "_" is kept: parse_duration is an identifier, not the word "parse".
    {**{c: " " for c in "\"#$%&()*+/<=>@[\\]^`{|}~-\t.,;:!?\n"}, "'": None}
)
_BRACES = re.compile(r"\{([^{}]*)\}")


def _expand(term: str) -> list[str]:
    """Expand ``diagnos{e,is,ing}`` into its forms (several brace groups multiply)."""
    found = _BRACES.search(term)
    if found is None:
        return [term]
    head, tail = term[: found.start()], term[found.end() :]
    return [form for option in found.group(1).split(",") for form in _expand(head + option + tail)]


def wordset(*chunks: str) -> frozenset[str]:
    """A frozen set of the space-separated words in ``chunks``."""
    return frozenset(" ".join(chunks).split())


def split_words(lowered: str) -> list[str]:
    """ASCII words of lower-cased text; apostrophes dropped ("what's" -> "whats").

    Other characters become ``?`` and so split words: terms in other scripts are matched as
    fragments of the text instead (see :class:`Lexicon`).
    """
    if not lowered.isascii():
        lowered = lowered.encode("ascii", "replace").decode("ascii")
    return lowered.translate(_SPLIT_TABLE).split()


@dataclass(frozen=True, slots=True)
class View:
    """A text prepared for lexicon lookups: its words, the phrases that can matter, itself."""

    text: str
    """The text, lower-cased (fragments are searched in it)."""
    tokens: tuple[str, ...]
    words: frozenset[str]
    phrases: frozenset[str]
    """2- and 3-word sequences starting with a word some lexicon phrase starts with."""
    ascii: bool = False
    """Whether the text is ASCII: then no fragment in another script can occur in it."""


def view(text: str) -> View:
    lowered = text.lower()
    tokens = split_words(lowered)
    # Only sequences that start like a known phrase are built: a handful, not one per word.
    starts = [i for i, token in enumerate(tokens) if token in _PHRASE_STARTS]
    phrases = frozenset(
        [" ".join(tokens[i : i + 2]) for i in starts]
        + [" ".join(tokens[i : i + 3]) for i in starts]
    )
    return View(lowered, tuple(tokens), frozenset(tokens), phrases, lowered.isascii())


class Lexicon:
    """One kind of cue: single words, 2-3 word phrases, and fragments.

    Fragments are matched as substrings of the text: terms in scripts written without spaces,
    any term with non-ASCII letters, and stems marked ``~`` (prefixes in inflected languages).
    """

    __slots__ = ("ascii_fragments", "fragments", "phrases", "words")

    def __init__(self, *specs: str) -> None:
        words: set[str] = set()
        phrases: set[str] = set()
        fragments: list[str] = []
        for spec in specs:
            for raw in spec.split("|"):
                for term in _expand(raw.strip()):
                    if not term:
                        continue
                    if term.startswith("~") or not term.isascii():
                        fragments.append(term.lstrip("~").lower())
                        continue
                    parts = split_words(term.lower())
                    if len(parts) == 1:
                        words.add(parts[0])
                    elif 1 < len(parts) <= 3:
                        phrases.add(" ".join(parts))
                    else:
                        raise ValueError(f"lexicon term too long: {term!r}")
        self.words = frozenset(words)
        self.phrases = frozenset(phrases)
        self.fragments = tuple(fragments)
        # Most fragments are in other scripts; most requests are ASCII, and ~30 lexicons are
        # tried per request, so the substring scans are skipped where they cannot match.
        self.ascii_fragments = tuple(f for f in fragments if f.isascii())

    def found(self, view: View) -> bool:
        """Whether any term occurs in ``view``."""
        if not self.words.isdisjoint(view.words) or not self.phrases.isdisjoint(view.phrases):
            return True
        fragments = self.ascii_fragments if view.ascii else self.fragments
        if not fragments:
            return False
        text = view.text
        return any(f in text for f in fragments)


def count_kinds(lexicons: Sequence[Lexicon], view: View) -> int:
    return sum(1 for lexicon in lexicons if lexicon.found(view))


PROOF = Lexicon(
    "prove|proves|proof|proofs|proving|derive|derivation|theorem|lemma|corollary|rigorous"
    "|rigorously|rigour|rigor|olympiad|imo|putnam|qed",
    "证明|證明|証明|~démontr|~beweis|~demostr|~dimostr|~доказ",
)
MATH = Lexicon(
    "integral{,s}|derivative{,s}|equation{,s}|inequalit{y,ies}|polynomial{,s}|matrix|matrices"
    "|eigenvalue{,s}|eigenvector{,s}|prime|primes|probabilit{y,ies}|stochastic|differential"
    "|modulo|divisible|divisibility|asymptotic{,ally}|convergen{ce,t}|real numbers"
    "|functional equation",
    "~∀|~∃|~∑|~∫|~√|~≥|~≤|~≠|~∈|~⊂|~⊆|~ℝ|~ℕ|~ℤ|~ℚ|~ℂ|~²|~³",
)
_FUNCTION_OF = re.compile(r"[fg]\([a-z]\)")
_POWER = re.compile(r"\^\s?\d")
_SUBSCRIPT = re.compile(r"[σπ][₀-₉]")
BIG_O = re.compile(r"o\((?:log|n|1)")


def has_notation(text: str) -> bool:
    """Maths notation: f(x), powers, Σ₃-style subscripts. Substring checks first: a regex scan
    of a long paste costs far more than these."""
    return (
        (("f(" in text or "g(" in text) and _FUNCTION_OF.search(text) is not None)
        or ("^" in text and _POWER.search(text) is not None)
        or (("σ" in text or "π" in text) and _SUBSCRIPT.search(text) is not None)
    )

HARD = (
    # formal methods
    Lexicon(
        "tla|coq|isabelle|lean 4|lean4|formal {spec,specification,model,verification,semantics}"
        "|formally {verify,verified,specify}|model check{,er,ing}|invariant{,s}"
        "|{liveness,safety} propert{y,ies}|temporal logic|{weak,strong} fairness"
    ),
    # concurrency
    Lexicon(
        "lock free|wait free|lockless|memory order{,ing,ings}|happens before|linearizab{le,ility}"
        "|compare and swap|cas|aba|data race{,s}|race condition{,s}|deadlock{,s}|atomic|atomics"
        "|interleaving{,s}|contention|double free{,s}|use after free|memory model"
    ),
    # distributed consistency
    Lexicon(
        "consensus|paxos|raft|byzantine|exactly once|active active|multi region|split brain"
        "|quorum{,s}|crdt{,s}|serializab{le,ility}|isolation level{,s}|two phase commit|2pc"
    ),
    # security analysis
    Lexicon(
        "threat model{,ing,s}|attack {path,paths,surface,tree,trees,vector,vectors}"
        "|cryptograph{y,ic}|key exchange|forward secrecy|side channel{,s}|replay attack{,s}"
        "|nonce|nonces|privilege escalation|exploit{,s,able,ation}"
    ),
    # theory of computation and programming languages
    Lexicon(
        "undecidab{le,ility}|np hard|np complete|complexity class|reduction from|turing machine{,s}"
        "|arithmetical hierarchy|recursively enumerable|type inference|unification|type system{,s}"
        "|polymorphism|lambda calculus|category theory|operational semantics"
    ),
    # advanced maths, statistics and science
    Lexicon(
        "stochastic|pde|pdes|partial differential|characteristic function|bifurcation"
        "|stability analysis|next generation matrix|markov|bayesian|posterior|causal"
        "|confound{,s,er,ers,ing}"
        "|instrumental variable{,s}|difference in differences|selection bias|survival analysis"
        "|functional equation{,s}|for all real|for all positive|for all integers"
    ),
    # algorithm and data-structure bounds
    Lexicon(
        "amortized|amortised|worst case|persistent data structure|persistent tree|path copying"
        "|segment tree|fenwick tree{,s}|binary indexed tree|suffix array|suffix tree"
        "|dynamic programming|approximation ratio"
    ),
)
REASONING = (
    # design and architecture
    Lexicon(
        "design|designs|designing|architect{,ure,ures,ural,ing}|system design|data model|schema"
    ),
    # trade-offs and comparison
    Lexicon(
        "tradeoff{,s}|trade off{,s}|pros and cons|compare|comparison|versus|alternative{,s}"
        "|which {approach,option,design}"
    ),
    # diagnosis
    Lexicon(
        "diagnos{e,es,ed,is,ing}|root cause{,s}|investigat{e,es,ed,ing,ion}|figure out"
        "|hypothes{is,es}|experiment{,s}|causes|whats {going on,causing,happening}"
        "|why {is,does,did,do,are,would}|regression{,s}|flaky"
    ),
    # planning and migration
    Lexicon(
        "plan|planning|roadmap|migrat{e,es,ed,ing,ion,ions}|rollout|roll out|incremental{,ly}"
        "|phased|sequenc{e,es,ing}|prioriti{se,ze,sed,zed,sation,zation}|in order|priority order"
        "|rank|ranked|ranking|step by step"
    ),
    # critique and risk
    Lexicon(
        "critique|critical|criticism|evaluat{e,ion}|assess{,ment}|audit|weakness{,es}|flaw|flaws"
        "|vulnerab{le,ility,ilities}|risk|risks|pitfall{,s}|failure mode{,s}|could go wrong"
        "|tear it apart|tear this apart|edge case{,s}"
    ),
    # justification and recommendation
    Lexicon(
        "justify|justification|justified|rationale|reasoning|argue|argument{,s}|recommend{,ation}"
        "|recommandation|empfehlung|explain why|explain how|decide|decision{,s}|mechanism{,s}"
    ),
    # performance and scale
    Lexicon(
        "scalab{le,ility}|at scale|throughput|latency|p95|p99|bottleneck{,s}|performance|faster"
        "|speed up|complexity|big o"
        "|optimi{se,ze,sation,zation,sing,zing}"
    ),
    # cross-cutting implications
    Lexicon(
        "implication{,s}|consequence{,s}|interact{,s,ion,ions}|across|end to end|cross cutting"
        "|cross domain|cross team|cross border|strateg{y,ies,ic}|jurisdiction{,s}|holistic"
        "|dependency graph|dependencies"
    ),
    # refactoring and restructuring
    Lexicon(
        "refactor{,ing}|restructur{e,ing}|rearchitect|re architect|decoupl{e,ing}"
        "|moduli{se,ze,sation,zation}|monolith|split the|split our"
    ),
    # breadth: the change spans many parts
    Lexicon(
        "{all,every,each} {,our ,the ,your }{repos,repositories,services,microservices,modules"
        ",packages,handlers,files,tables,teams,endpoints,callsites}|call sites|codebase wide"
        "|per {repo,repository,service,module,team}"
    ),
    # hard constraints the work must respect
    Lexicon(
        "{dont,do not,must not,never,without} {break,breaking,lose,losing,downtime,regress}"
        "|zero downtime|backward compatible|backwards compatible|backward compatibility"
        "|identical|unchanged"
    ),
    # other languages' analysis vocabulary
    Lexicon(
        "analyse|analyze|analysis|analyses|analysing|analyzing|analizar|análisis|analyser"
        "|untersuche|untersuchen|évaluer|évalue",
        "評価|分析|比较",
    ),
)

EXTRACT, CLASSIFY, TRANSFORM, TRANSLATE, LOOKUP, SMALLTALK = range(6)
SIMPLE = (
    # extraction and parsing
    Lexicon(
        "extract{,s,ion}|extrais|extraire|extrahiere|extrahieren|extrae|pull out|pull every"
        "|pull all|parse|ocr|into json|as json|to json|json only|output json|return json"
        "|json object"
    ),
    # classification, labelling, routing
    Lexicon(
        "classif{y,ier,ication}|categori{se,ze,sation,zation}|label|labels|tag|tags|sentiment"
        "|intent|priority|triage|route {it,this,each,the}"
        "|which {language,category,queue,department,team}|language is this|detect the language"
        "|what language|spam or|is this spam"
    ),
    # mechanical transformation
    Lexicon(
        "convert|reformat|format this|format it|format as|rename|replace|normali{se,ze}|redact"
        "|anonymi{se,ze}|dedup{,e,licate}|sort|lowercase|uppercase|capitali{se,ze}"
        "|fix {,the ,my }{grammar,spelling,typo,typos,punctuation}|proofread|rephrase|reword"
        "|more polite|politely|markdown table|into a table|to yaml|to csv|passive voice"
        "|active voice|title case|sentence case|{past,present,future} tense"
        "|{comma,tab,semicolon} separated|one per line|umschreiben",
        "改成|書き換",
    ),
    # translation (counted only for short tasks)
    Lexicon(
        "translate|translation|translating|übersetze|übersetzen|traduis|traduire|traduce|traducir"
        "|traduza|tradurre",
        "翻译|翻訳|~перевед",
    ),
    # looking up one fact (plus the question shapes in _is_lookup)
    Lexicon(
        "synonym{,s}|antonym{,s}|define|definition|meaning of|stand for|acronym|abbreviation"
        "|capital of|to spell|you spell|how many"
    ),
    # recall of something already said (plus greetings and thanks in _is_smalltalk)
    Lexicon("remind me|what was the|what was that|command again"),
)
QUESTION_START = wordset(
    "what whats which who when where is are does was were how wie welche quel quelle combien",
    "cuántos cuántas qué",
)
HOW_LOOKUP = frozenset(("many", "much", "long", "old", "far", "tall", "big"))
LAST_QUESTION_START = QUESTION_START | {"can", "do", "did", "could", "will"}
"""Openings of a closing question about material given above ("... Can I return it?")."""
SMALLTALK_START = wordset(
    "thanks thank thx ty ok okay great perfect cool awesome nice cheers merci danke gracias hi",
    "hello hey bonjour hola hallo",
)
BREVITY = Lexicon(
    "{one,single,1} {word,line,sentence,number,liner}|in one line|one liner|oneliner"
    "|just {the,a,one} {number,name,answer,word,code,command,value,letter}"
    "|{reply,answer,respond,output} {only,just,exactly}"
    "|{reply,answer,respond,output} with {only,just,exactly,one}"
    "|only {the,output,return,answer,reply}|yes or no|true or false|quick|quickly|briefly"
    "|keep it short|short answer|a title for|the title for|commit message|one decimal"
    "|no explanation|just tell|just give|for a slide"
)
BREVITY_RANGE = re.compile(r"(\d+)\s?(?:[-–]|to)\s?(\d+) (words?|lines|sentences|bullets)")
BREVITY_UNDER = re.compile(r"(?:under|max(?:imum)?|at most) (\d+) words")
EXPLAIN = Lexicon(
    "why|explain|describe|write|rewrite|draft|implement|create|build|review|improve|suggest"
    "|summarise|summarize|summary|simplify|fix|add|change|update|port|configure|debug"
    "|how {do,does,did,can,should,would,to}|walk through|walk me|help me|plain english"
    "|plain language|whats wrong|set up",
    "~erklär|~expliqu|説明|解释|教えて",
)
ASK_VERBS = wordset(
    "give list show explain describe design propose identify compare derive prove write include",
    "rank recommend analyse analyze estimate walk discuss find flag tell suggest add draft",
    "summarise summarize outline evaluate assess justify plan diagnose review implement fix say",
    "rename convert extract translate classify categorise categorize format rewrite refactor",
    "migrate investigate check create build turn pull redact parse answer critique resume résume",
    "traduis traduce übersetze fasse erkläre explique analyse",
)
STEP_AFTER = frozenset(("and", "then", "also", "plus", "finally", "please"))
CLAUSE = re.compile(r"[.;:!?\n]+|,\s")
LIST_MARKS = "()-*•0123456789"
REQUEST = Lexicon(
    "please|pls|bitte|can you|could you|would you|i need|i want|id like|help me|give me|tell me"
    "|let me know|por favor|sil vous plait|sil te plait",
    "请|ください",
)
BASICS = Lexicon(
    "beginner|beginners|junior|newbie|newbies|for kids|for a kid|eli5|simple terms|layman"
    "|layperson|laypeople|high school|my teacher|introduction|introductory|basics",
    "初心者|新手|入门|~anfänger|~débutant",
)
SYSTEM_SPEC = Lexicon(
    "{reply,respond,answer,output,return} {only,exactly,just}"
    "|{reply,respond,answer,output,return} with {only,exactly,just,one}"
    "|only {output,return,reply,answer}|output json|output only|one word"
)
TOOL_FAILURE = Lexicon(
    "traceback|exception|error|errors|failed|failure|failures|fail|panic|fatal|denied|conflict"
    "|mismatch|timeout|timed out|not found|warning|warnings|assertionerror"
)
_PHRASE_STARTS: Final = frozenset(
    phrase.split(" ", 1)[0]
    for lexicon in (
        PROOF, MATH, *HARD, *REASONING, *SIMPLE, BREVITY, EXPLAIN, REQUEST, BASICS,
        SYSTEM_SPEC, TOOL_FAILURE,
    )
    for phrase in lexicon.phrases
)
"""First words of all lexicon phrases: a text's phrases are only built where one starts."""
