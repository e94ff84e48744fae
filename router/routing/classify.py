"""Stage 2 of the pipeline: :class:`Parsed` + token estimate -> :class:`Features`.

Features are what routing rules in ``router.yaml`` test, by field name, so every field is a plain
scalar or a tuple of strings and carries a docstring (``router explain`` shows it).

Complexity is judged from the *task*, not the harness: the latest user turn that has real text
(after removing ``<system-reminder>`` blocks that agents resend every turn), plus what the request
asks for (thinking, effort, output budget) and, in agent loops, how deep the loop is and what the
tool results look like. System prompts and tool lists are context: they never raise complexity
(a short system prompt that only sets an output format may lower it). Long pastes are sampled at
their head and tail, where the instruction usually is, so the work per request is bounded no
matter how long the conversation.

Everything here is pure: no I/O, no clock, no state; regexes are compiled once at import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from router.parse import Parsed
from router.routing.features import (
    COMPLEX_FROM,
    SIMPLE_BELOW,
    Features,
)
from router.routing.tokens import TokenEstimate
from router.wire import Block, MessageParam, MessagesRequest

# -- text sampling -------------------------------------------------------------------------------

_BLOCK_FULL: Final = 4000
"""Text blocks up to this length are read whole; longer ones by head and tail."""
_HEAD: Final = 1500
_TAIL: Final = 1500
_TASK_MAX: Final = 6000
"""Most characters of task text examined."""
_DOMAIN_MAX: Final = 3000
"""Most characters of prose searched for specialist vocabulary."""
_SCAN_BACK: Final = 400
"""Most messages walked back to find the task turn of an agent loop."""
_RESULT_SAMPLE: Final = 1200
"""Characters read from each of the latest tool results."""
_RESULTS_SAMPLED: Final = 8

_REMINDER = re.compile(
    r"<system-reminder>.*?(?:</system-reminder>|\Z)|\A.*?</system-reminder>", re.DOTALL
)


def _window(text: str) -> str:
    if len(text) <= _BLOCK_FULL:
        return text
    return text[:_HEAD] + "\n\n" + text[-_TAIL:]


def _user_text(content: str | list[Block]) -> str:
    """Return the sampled user-written text of a message: text blocks minus system reminders."""
    if isinstance(content, str):
        parts = [_window(content)]
    else:
        parts = [
            _window(b["text"])
            for b in content
            if b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
    text = "\n\n".join(parts)
    if "system-reminder>" in text:
        text = _REMINDER.sub("", text)
    text = text.strip()
    if len(text) > _TASK_MAX:
        text = text[: _TASK_MAX // 2] + "\n\n" + text[-_TASK_MAX // 2 :]
    return text


def _full_length(content: str | list[Block]) -> int:
    """Characters the user wrote in a message: its text, less the harness's reminders."""
    texts = [content] if isinstance(content, str) else [
        b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    return sum(_without_reminders(t) for t in texts)


def _without_reminders(text: str) -> int:
    # Reminders are small; a huge block is a paste, measured as it is.
    if len(text) > _BLOCK_FULL * 4 or "system-reminder>" not in text:
        return len(text)
    return len(_REMINDER.sub("", text).strip())


# -- vocabulary ----------------------------------------------------------------------------------
# What a request asks is read with word sets, not regular expressions: the text is lower-cased
# and split once, and each cue below is a set lookup, so the cost is linear in the text with a
# small constant (alternations of hundreds of words in `re` cost ~20 ms on a 9k-character
# paste; this costs well under 0.1 ms). Terms are general vocabulary in English plus the
# commonest other languages. Each lexicon is one *kind*: a kind counts once however often it
# matches, so a pasted document that repeats a word cannot inflate a score.

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


def _wordset(*chunks: str) -> frozenset[str]:
    """A frozen set of the space-separated words in ``chunks``."""
    return frozenset(" ".join(chunks).split())


def _tokens(lowered: str) -> list[str]:
    """ASCII words of lower-cased text; apostrophes dropped ("what's" -> "whats").

    Other characters become ``?`` and so split words: terms in other scripts are matched as
    fragments of the text instead (see :class:`_Lexicon`).
    """
    if not lowered.isascii():
        lowered = lowered.encode("ascii", "replace").decode("ascii")
    return lowered.translate(_SPLIT_TABLE).split()


@dataclass(frozen=True, slots=True)
class _View:
    """A text prepared for lexicon lookups: its words, the phrases that can matter, itself."""

    text: str
    """The text, lower-cased (fragments are searched in it)."""
    tokens: tuple[str, ...]
    words: frozenset[str]
    phrases: frozenset[str]
    """2- and 3-word sequences starting with a word some lexicon phrase starts with."""


def _view(text: str) -> _View:
    lowered = text.lower()
    tokens = _tokens(lowered)
    # Only sequences that start like a known phrase are built: a handful, not one per word.
    starts = [i for i, token in enumerate(tokens) if token in _PHRASE_STARTS]
    phrases = frozenset(
        [" ".join(tokens[i : i + 2]) for i in starts]
        + [" ".join(tokens[i : i + 3]) for i in starts]
    )
    return _View(lowered, tuple(tokens), frozenset(tokens), phrases)


class _Lexicon:
    """One kind of cue: single words, 2-3 word phrases, and fragments.

    Fragments are matched as substrings of the text: terms in scripts written without spaces,
    any term with non-ASCII letters, and stems marked ``~`` (prefixes in inflected languages).
    """

    __slots__ = ("fragments", "phrases", "words")

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
                    parts = _tokens(term.lower())
                    if len(parts) == 1:
                        words.add(parts[0])
                    elif 1 < len(parts) <= 3:
                        phrases.add(" ".join(parts))
                    else:
                        raise ValueError(f"lexicon term too long: {term!r}")
        self.words = frozenset(words)
        self.phrases = frozenset(phrases)
        self.fragments = tuple(fragments)

    def found(self, view: _View) -> bool:
        """Whether any term occurs in ``view``."""
        return (
            not self.words.isdisjoint(view.words)
            or not self.phrases.isdisjoint(view.phrases)
            or any(f in view.text for f in self.fragments)
        )


def _count_kinds(lexicons: Sequence[_Lexicon], view: _View) -> int:
    return sum(1 for lexicon in lexicons if lexicon.found(view))


_PROOF = _Lexicon(
    "prove|proves|proof|proofs|proving|derive|derivation|theorem|lemma|corollary|rigorous"
    "|rigorously|rigour|rigor|olympiad|imo|putnam|qed",
    "证明|證明|証明|~démontr|~beweis|~demostr|~dimostr|~доказ",
)
_MATH = _Lexicon(
    "integral{,s}|derivative{,s}|equation{,s}|inequalit{y,ies}|polynomial{,s}|matrix|matrices"
    "|eigenvalue{,s}|eigenvector{,s}|prime|primes|probabilit{y,ies}|stochastic|differential"
    "|modulo|divisible|divisibility|asymptotic{,ally}|convergen{ce,t}|real numbers"
    "|functional equation",
    "~∀|~∃|~∑|~∫|~√|~≥|~≤|~≠|~∈|~⊂|~⊆|~ℝ|~ℕ|~ℤ|~ℚ|~ℂ|~²|~³",
)
_FUNCTION_OF = re.compile(r"[fg]\([a-z]\)")
_POWER = re.compile(r"\^\s?\d")
_SUBSCRIPT = re.compile(r"[σπ][₀-₉]")
_BIG_O = re.compile(r"o\((?:log|n|1)")


def _has_notation(text: str) -> bool:
    """Maths notation: f(x), powers, Σ₃-style subscripts. Substring checks first: a regex scan
    of a long paste costs far more than these."""
    return (
        (("f(" in text or "g(" in text) and _FUNCTION_OF.search(text) is not None)
        or ("^" in text and _POWER.search(text) is not None)
        or (("σ" in text or "π" in text) and _SUBSCRIPT.search(text) is not None)
    )

_HARD = (
    # formal methods
    _Lexicon(
        "tla|coq|isabelle|lean 4|lean4|formal {spec,specification,model,verification,semantics}"
        "|formally {verify,verified,specify}|model check{,er,ing}|invariant{,s}"
        "|{liveness,safety} propert{y,ies}|temporal logic|{weak,strong} fairness"
    ),
    # concurrency
    _Lexicon(
        "lock free|wait free|lockless|memory order{,ing,ings}|happens before|linearizab{le,ility}"
        "|compare and swap|cas|aba|data race{,s}|race condition{,s}|deadlock{,s}|atomic|atomics"
        "|interleaving{,s}|contention|double free{,s}|use after free|memory model"
    ),
    # distributed consistency
    _Lexicon(
        "consensus|paxos|raft|byzantine|exactly once|active active|multi region|split brain"
        "|quorum{,s}|crdt{,s}|serializab{le,ility}|isolation level{,s}|two phase commit|2pc"
    ),
    # security analysis
    _Lexicon(
        "threat model{,ing,s}|attack {path,paths,surface,tree,trees,vector,vectors}"
        "|cryptograph{y,ic}|key exchange|forward secrecy|side channel{,s}|replay attack{,s}"
        "|nonce|nonces|privilege escalation|exploit{,s,able,ation}"
    ),
    # theory of computation and programming languages
    _Lexicon(
        "undecidab{le,ility}|np hard|np complete|complexity class|reduction from|turing machine{,s}"
        "|arithmetical hierarchy|recursively enumerable|type inference|unification|type system{,s}"
        "|polymorphism|lambda calculus|category theory|operational semantics"
    ),
    # advanced maths, statistics and science
    _Lexicon(
        "stochastic|pde|pdes|partial differential|characteristic function|bifurcation"
        "|stability analysis|next generation matrix|markov|bayesian|posterior|causal"
        "|confound{,s,er,ers,ing}"
        "|instrumental variable{,s}|difference in differences|selection bias|survival analysis"
        "|functional equation{,s}|for all real|for all positive|for all integers"
    ),
    # algorithm and data-structure bounds
    _Lexicon(
        "amortized|amortised|worst case|persistent data structure|persistent tree|path copying"
        "|segment tree|fenwick|suffix array|suffix tree|dynamic programming|approximation ratio"
    ),
)
_REASONING = (
    # design and architecture
    _Lexicon(
        "design|designs|designing|architect{,ure,ures,ural,ing}|system design|data model|schema"
    ),
    # trade-offs and comparison
    _Lexicon(
        "tradeoff{,s}|trade off{,s}|pros and cons|compare|comparison|versus|alternative{,s}"
        "|which {approach,option,design}"
    ),
    # diagnosis
    _Lexicon(
        "diagnos{e,es,ed,is,ing}|root cause{,s}|investigat{e,es,ed,ing,ion}|figure out"
        "|hypothes{is,es}|experiment{,s}|causes|whats {going on,causing,happening}"
        "|why {is,does,did,do,are,would}|regression{,s}|flaky"
    ),
    # planning and migration
    _Lexicon(
        "plan|planning|roadmap|migrat{e,es,ed,ing,ion,ions}|rollout|roll out|incremental{,ly}"
        "|phased|sequenc{e,es,ing}|prioriti{se,ze,sed,zed,sation,zation}|in order|priority order"
        "|rank|ranked|ranking|step by step"
    ),
    # critique and risk
    _Lexicon(
        "critique|critical|criticism|evaluat{e,ion}|assess{,ment}|audit|weakness{,es}|flaw|flaws"
        "|vulnerab{le,ility,ilities}|risk|risks|pitfall{,s}|failure mode{,s}|could go wrong"
        "|tear it apart|tear this apart|edge case{,s}"
    ),
    # justification and recommendation
    _Lexicon(
        "justify|justification|justified|rationale|reasoning|argue|argument{,s}|recommend{,ation}"
        "|recommandation|empfehlung|explain why|explain how|decide|decision{,s}|mechanism{,s}"
    ),
    # performance and scale
    _Lexicon(
        "scalab{le,ility}|at scale|throughput|latency|p95|p99|bottleneck{,s}|performance|faster"
        "|speed up|complexity|big o"
        "|optimi{se,ze,sation,zation,sing,zing}"
    ),
    # cross-cutting implications
    _Lexicon(
        "implication{,s}|consequence{,s}|interact{,s,ion,ions}|across|end to end|cross cutting"
        "|cross domain|cross team|cross border|strateg{y,ies,ic}|jurisdiction{,s}|holistic"
        "|dependency graph|dependencies"
    ),
    # refactoring and restructuring
    _Lexicon(
        "refactor{,ing}|restructur{e,ing}|rearchitect|re architect|decoupl{e,ing}"
        "|moduli{se,ze,sation,zation}|monolith|split the|split our"
    ),
    # breadth: the change spans many parts
    _Lexicon(
        "{all,every,each} {,our ,the ,your }{repos,repositories,services,microservices,modules"
        ",packages,handlers,files,tables,teams,endpoints,callsites}|call sites|codebase wide"
        "|per {repo,repository,service,module,team}"
    ),
    # hard constraints the work must respect
    _Lexicon(
        "{dont,do not,must not,never,without} {break,breaking,lose,losing,downtime,regress}"
        "|zero downtime|backward compatible|backwards compatible|backward compatibility"
        "|identical|unchanged"
    ),
    # other languages' analysis vocabulary
    _Lexicon(
        "analyse|analyze|analysis|analyses|analysing|analyzing|analizar|análisis|analyser"
        "|untersuche|untersuchen|évaluer|évalue",
        "評価|分析|比较",
    ),
)

_EXTRACT, _CLASSIFY, _TRANSFORM, _TRANSLATE, _LOOKUP, _SMALLTALK = range(6)
_SHORT_TEXT: Final = 400
"""Tasks up to this many characters count a translation as a simple one."""
_SIMPLE = (
    # extraction and parsing
    _Lexicon(
        "extract{,s,ion}|extrais|extraire|extrahiere|extrahieren|extrae|pull out|pull every"
        "|pull all|parse|ocr|into json|as json|to json|json only|output json|return json"
        "|json object"
    ),
    # classification, labelling, routing
    _Lexicon(
        "classif{y,ier,ication}|categori{se,ze,sation,zation}|label|labels|tag|tags|sentiment"
        "|intent|priority|triage|route {it,this,each,the}"
        "|which {language,category,queue,department,team}|language is this|detect the language"
        "|what language|spam or|is this spam"
    ),
    # mechanical transformation
    _Lexicon(
        "convert|reformat|format this|format it|format as|rename|replace|normali{se,ze}|redact"
        "|anonymi{se,ze}|dedup{,e,licate}|sort|lowercase|uppercase|capitali{se,ze}"
        "|fix {,the ,my }{grammar,spelling,typo,typos,punctuation}|proofread|rephrase|reword"
        "|more polite|politely|markdown table|into a table|to yaml|to csv|passive voice"
        "|active voice|title case|sentence case|{past,present,future} tense"
        "|{comma,tab,semicolon} separated|one per line|umschreiben",
        "改成|書き換",
    ),
    # translation (counted only for short tasks)
    _Lexicon(
        "translate|translation|translating|übersetze|übersetzen|traduis|traduire|traduce|traducir"
        "|traduza|tradurre",
        "翻译|翻訳|~перевед",
    ),
    # looking up one fact (plus the question shapes in _is_lookup)
    _Lexicon(
        "synonym{,s}|antonym{,s}|define|definition|meaning of|stand for|acronym|abbreviation"
        "|capital of|to spell|you spell|how many"
    ),
    # recall of something already said (plus greetings and thanks in _is_smalltalk)
    _Lexicon("remind me|what was the|what was that|command again"),
)
_QUESTION_START = _wordset(
    "what whats which who when where is are does was were how wie welche quel quelle combien",
    "cuántos cuántas qué",
)
_HOW_LOOKUP = frozenset(("many", "much", "long", "old", "far", "tall", "big"))
_SMALLTALK_START = _wordset(
    "thanks thank thx ty ok okay great perfect cool awesome nice cheers merci danke gracias hi",
    "hello hey bonjour hola hallo",
)
_BREVITY = _Lexicon(
    "{one,single,1} {word,line,sentence,number,liner}|in one line|one liner|oneliner"
    "|just {the,a,one} {number,name,answer,word,code,command,value,letter}"
    "|{reply,answer,respond,output} {only,just,exactly}"
    "|{reply,answer,respond,output} with {only,just,exactly,one}"
    "|only {the,output,return,answer,reply}|yes or no|true or false|quick|quickly|briefly"
    "|keep it short|short answer|a title for|the title for|commit message|one decimal"
    "|no explanation|just tell|just give|for a slide"
)
_BREVITY_RANGE = re.compile(r"(\d+)\s?(?:[-–]|to)\s?(\d+) (words?|lines|sentences|bullets)")
_BREVITY_UNDER = re.compile(r"(?:under|max(?:imum)?|at most) (\d+) words")
_EXPLAIN = _Lexicon(
    "why|explain|describe|write|rewrite|draft|implement|create|build|review|improve|suggest"
    "|summarise|summarize|summary|simplify|fix|add|change|update|port|configure|debug"
    "|how {do,does,did,can,should,would,to}|walk through|walk me|help me|plain english"
    "|plain language|whats wrong|set up",
    "~erklär|~expliqu|説明|解释|教えて",
)
_ASK_VERBS = _wordset(
    "give list show explain describe design propose identify compare derive prove write include",
    "rank recommend analyse analyze estimate walk discuss find flag tell suggest add draft",
    "summarise summarize outline evaluate assess justify plan diagnose review implement fix say",
    "rename convert extract translate classify categorise categorize format rewrite refactor",
    "migrate investigate check create build turn pull redact parse answer critique resume résume",
    "traduis traduce übersetze fasse erkläre explique analyse",
)
_STEP_AFTER = frozenset(("and", "then", "also", "plus", "finally", "please"))
_CLAUSE = re.compile(r"[.;:!?\n]+|,\s")
_LIST_MARKS = "()-*•0123456789"
_REQUEST = _Lexicon(
    "please|pls|bitte|can you|could you|would you|i need|i want|id like|help me|give me|tell me"
    "|let me know|por favor|sil vous plait|sil te plait",
    "请|ください",
)
_BASICS = _Lexicon(
    "beginner|beginners|junior|newbie|newbies|for kids|for a kid|eli5|simple terms|layman"
    "|layperson|laypeople|high school|my teacher|introduction|introductory|basics",
    "初心者|新手|入门|~anfänger|~débutant",
)
_SYSTEM_SPEC = _Lexicon(
    "{reply,respond,answer,output,return} {only,exactly,just}"
    "|{reply,respond,answer,output,return} with {only,exactly,just,one}"
    "|only {output,return,reply,answer}|output json|output only|one word"
)
_SYSTEM_SPEC_MAX: Final = 2500
"""System prompts longer than this are personas or agent harnesses, not a task spec."""
_TOOL_FAILURE = _Lexicon(
    "traceback|exception|error|errors|failed|failure|failures|fail|panic|fatal|denied|conflict"
    "|mismatch|timeout|timed out|not found|warning|warnings|assertionerror"
)
_PHRASE_STARTS: Final = frozenset(
    phrase.split(" ", 1)[0]
    for lexicon in (
        _PROOF, _MATH, *_HARD, *_REASONING, *_SIMPLE, _BREVITY, _EXPLAIN, _REQUEST, _BASICS,
        _SYSTEM_SPEC, _TOOL_FAILURE,
    )
    for phrase in lexicon.phrases
)
"""First words of all lexicon phrases: a text's phrases are only built where one starts."""

_CODE_START = _wordset(
    "def import function const var func package public private protected #include elif fn impl",
    "struct enum async await lambda void",
)
_SQL_START = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "ALTER ", "WITH ", "FROM ")
_CALL_END = re.compile(r"\w\([^()]*\):?$")
_PARAGRAPH = re.compile(r"\n\s*\n")
_INSTRUCTION_FULL: Final = 1000
"""Prose up to this many characters is read as instruction in full."""
_INSTRUCTION_PART: Final = 700
"""Otherwise the first and the last paragraph, each cut to this."""


@dataclass(frozen=True, slots=True)
class _Conversation:
    """Structural facts about the message list (block types only; no text is scanned)."""

    task_content: str | list[Block] | None
    task_from_history: bool
    last_turn: str
    user_turns: int
    tool_calls: int
    tool_results: int
    tool_errors: int
    tool_result_chars: int
    tool_loop_depth: int
    history_thinking: bool


_TEXT, _USE, _RESULT, _THOUGHT = 1, 2, 4, 8
_BLOCK_BITS: Final[Mapping[Any, int]] = {
    "text": _TEXT,
    "tool_use": _USE,
    "server_tool_use": _USE,
    "tool_result": _RESULT,
    "thinking": _THOUGHT,
    "redacted_thinking": _THOUGHT,
}


def _conversation(messages: Sequence[MessageParam]) -> _Conversation:
    # One pass over the blocks turns each message into a bit mask; everything else is read
    # from the masks, so a 300-message history costs one cheap loop, not several.
    masks: list[int] = []
    tool_calls = 0
    for message in messages:
        content = message.content
        if isinstance(content, str):
            masks.append(_TEXT)
            continue
        mask = 0
        for block in content:
            kind = block.get("type")
            bit = _BLOCK_BITS.get(kind, 0) if isinstance(kind, str) else 0
            mask |= bit
            tool_calls += bit == _USE
        masks.append(mask)
    roles = [m.role == "user" for m in messages]
    pairs = list(zip(roles, masks, strict=True))
    user_turns = sum(1 for is_user, mask in pairs if is_user and mask & _TEXT)
    history_thinking = any(mask & _THOUGHT for is_user, mask in pairs if not is_user)

    last = len(messages) - 1
    if last < 0:
        last_turn = "text"
    elif not roles[last]:
        last_turn = "prefill"
    elif masks[last] & _RESULT and not _user_text(messages[last].content):
        last_turn = "tool_result"
    else:
        last_turn = "text"

    # Latest user turn's tool results: how many, how big, whether they read like failures.
    results = errors = chars = 0
    latest_user = next((i for i in range(last, -1, -1) if roles[i]), None)
    if latest_user is not None and masks[latest_user] & _RESULT:
        content = messages[latest_user].content
        for block in content if isinstance(content, list) else ():
            if block.get("type") != "tool_result":
                continue
            results += 1
            text = _result_text(block.get("content"))
            chars += len(text)
            if block.get("is_error") is True or (
                results <= _RESULTS_SAMPLED
                and _TOOL_FAILURE.found(_view(text[:_RESULT_SAMPLE]))
            ):
                errors += 1

    depth = 0
    i = last - 1 if last >= 0 and not roles[last] else last  # a prefill does not end a loop
    while i >= 1 and roles[i] and not roles[i - 1] and masks[i] & _RESULT and masks[i - 1] & _USE:
        depth += 1
        i -= 2

    task: str | list[Block] | None = None
    from_history = False
    for i in range(last, max(-1, last - _SCAN_BACK), -1):
        if not roles[i]:
            continue
        if masks[i] & _TEXT and _user_text(messages[i].content):
            task = messages[i].content
            break
        from_history = True

    return _Conversation(
        task_content=task,
        task_from_history=from_history and task is not None,
        last_turn=last_turn,
        user_turns=user_turns,
        tool_calls=tool_calls,
        tool_results=results,
        tool_errors=errors,
        tool_result_chars=chars,
        tool_loop_depth=depth,
        history_thinking=history_thinking,
    )


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


def _system_head(system: str | list[Block] | None) -> str:
    """The opening of a short system prompt: where a task-spec prompt ("Classify ... Reply with
    one word") states the job. Empty for long prompts. Never used to raise complexity."""
    if isinstance(system, str):
        return system[:400] if len(system) <= _SYSTEM_SPEC_MAX else ""
    if system:
        texts = [b["text"] for b in system if isinstance(b.get("text"), str)]
        if sum(len(t) for t in texts) <= _SYSTEM_SPEC_MAX:
            return "\n".join(texts)[:400]
    return ""


# -- scoring -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TaskSignals:
    hard: int
    reasoning: int
    simple: int
    proof: bool
    math: bool
    brevity: bool
    basics: bool
    explain: bool
    steps: int
    code_lines: int
    data_lines: int
    prose_words: int


def _starts_question(line: str, starters: frozenset[str]) -> bool:
    tokens = _tokens(line.lower())[:2]
    if not tokens:
        return False
    if tokens[0] == "how":
        return len(tokens) > 1 and tokens[1] in _HOW_LOOKUP
    return tokens[0] in starters


_LAST_QUESTION_START = _QUESTION_START | {"can", "do", "did", "could", "will"}


def _is_lookup(ask: str, view: _View) -> bool:
    """A question after one fact: the whole ask ("which http code is 'too many requests'"), or a
    closing question about material given above ("... Can I return a gift card?")."""
    if _SIMPLE[_LOOKUP].found(view):
        return True
    text = ask.strip()
    if "\n" not in text and len(text) <= 100 and _starts_question(text, _QUESTION_START):
        return True
    last = text.rsplit("\n", 1)[-1].strip()
    return last.endswith("?") and len(last) <= 100 and _starts_question(last, _LAST_QUESTION_START)


def _is_smalltalk(ask: str, view: _View) -> bool:
    """Thanks, greetings, or asking for something already said."""
    if _SIMPLE[_SMALLTALK].found(view) or "again?" in view.text:
        return True
    text = ask.strip()
    return (
        len(text) <= 70
        and "\n" not in text
        and bool(view.tokens)
        and view.tokens[0] in _SMALLTALK_START
    )


def _is_brief(view: _View) -> bool:
    """The ask wants a short answer: one word or line, just the number, a few sentences."""
    if _BREVITY.found(view):
        return True
    if not any(unit in view.text for unit in ("word", "line", "sentence", "bullet")):
        return False
    for found in _BREVITY_RANGE.finditer(view.text):
        most, unit = int(found.group(2)), found.group(3)
        if most <= (50 if unit.startswith("word") else 5):
            return True
    under = _BREVITY_UNDER.search(view.text)
    return under is not None and int(under.group(1)) <= 50


def _steps(view: _View) -> int:
    """Questions plus clauses that open with an imperative ("Rank causes, explain each, and give
    the fix" is three). A pasted list of products is not a list of requests: its items do not
    start with such verbs."""
    steps = view.text.count("?")
    for clause in _CLAUSE.split(view.text):
        for word in clause.split(None, 3):
            word = word.strip(_LIST_MARKS)
            if word and word not in _STEP_AFTER:
                steps += word in _ASK_VERBS
                break
    return steps


def _is_code(line: str, stripped: str) -> bool:
    if line.startswith(("  ", "\t")) or stripped[-1] in ";{}":
        return True
    if stripped.startswith(("```", "@@", "+++ ", "--- ", "diff --git", "#include")):
        return True
    if stripped.startswith(_SQL_START):
        return True
    first = stripped.split(" ", 1)[0]
    if first in _CODE_START or (first == "from" and " import " in stripped):
        return True
    return stripped[-1] in "):" and _CALL_END.search(stripped) is not None


def _is_data(stripped: str) -> bool:
    if stripped[0] in "[{\"|":
        return True
    fields = stripped.split(",", 2)
    if len(fields) == 3 and " " not in fields[0] and " " not in fields[1]:
        return True  # CSV
    if (
        len(stripped) > 12
        and stripped[:4].isdigit()
        and stripped[4] == "-"
        and stripped[10] in "T "
        and stripped[11].isdigit()
    ):
        return True  # timestamped log line
    return stripped.count("=") >= 2 and "=" in stripped.split(" ", 1)[0]  # key=value log


def _split_lines(text: str) -> tuple[int, int, str]:
    """Return (code lines, data lines, the remaining prose) of a task text."""
    code = data = 0
    prose: list[str] = []
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            prose.append("")
        elif _is_code(line, stripped):
            code += 1
        elif _is_data(stripped):
            data += 1
        else:
            prose.append(line)
    return code, data, "\n".join(prose)


def _asks(text: str) -> bool:
    view = _view(text)
    return "?" in text or _REQUEST.found(view) or _steps(view) > 0


def _instruction(prose: str) -> str:
    """The part of the task prose that is most likely the ask, not pasted material.

    Short prose is all instruction. In longer prose the ask is the opening or the closing
    paragraph ("Review this contract: ... Identify the ten most material issues"); the middle is
    material whose vocabulary (a CV mentioning a migration) says nothing about the work asked.
    """
    if len(prose) <= _INSTRUCTION_FULL:
        return prose
    paragraphs = [p for p in _PARAGRAPH.split(prose) if p.strip()]
    if len(paragraphs) <= 2:
        head, tail = prose[:_INSTRUCTION_PART], prose[-_INSTRUCTION_PART:]
    else:
        head, tail = paragraphs[0][:_INSTRUCTION_PART], paragraphs[-1][-_INSTRUCTION_PART:]
    # Keep the end that asks something (a question, a request, an imperative); a paper's
    # abstract or a contract's preamble is material even though it comes first.
    asking = [p for p in (head, tail) if _asks(p)]
    return "\n\n".join(asking or (head, tail))


def _task_signals(text: str, task_chars: int) -> _TaskSignals:
    code_lines, data_lines, prose = _split_lines(text)
    ask = _instruction(prose)
    view = _view(ask)
    # The domain shows anywhere (a protocol described in the material is still cryptography);
    # what is asked, and how much, is read from the instruction alone.
    if len(prose) > _DOMAIN_MAX:
        prose = prose[: _DOMAIN_MAX // 2] + "\n" + prose[-_DOMAIN_MAX // 2 :]
    domain = view if prose == ask else _view(prose)
    hard = _count_kinds(_HARD, domain)
    if not _HARD[-1].found(domain) and "o(" in domain.text and _BIG_O.search(domain.text):
        hard += 1
    reasoning = _count_kinds(_REASONING, view)
    simple = [lexicon.found(view) for lexicon in _SIMPLE]
    simple[_LOOKUP] = _is_lookup(ask, view)
    simple[_SMALLTALK] = _is_smalltalk(ask, view)
    if task_chars > _SHORT_TEXT:
        simple[_TRANSLATE] = False  # translating a page is drafting work, not a lookup
    if reasoning:
        simple[_LOOKUP] = False  # "what are the trade-offs of X?" is a question, not a fact
    simple_kinds = sum(simple)
    # "Rewrite this sentence in the passive voice" uses a writing verb for a mechanical edit.
    explain = _EXPLAIN.found(view) and not (simple_kinds and task_chars < 200)
    return _TaskSignals(
        hard=hard,
        reasoning=reasoning,
        simple=simple_kinds,
        proof=_PROOF.found(domain),
        math=_MATH.found(domain) or _has_notation(domain.text),
        brevity=_is_brief(view),
        basics=_BASICS.found(view),
        explain=explain,
        steps=_steps(view),
        code_lines=code_lines,
        data_lines=data_lines,
        prose_words=len(view.tokens),
    )


def _score(
    sig: _TaskSignals,
    *,
    task_chars: int,
    thinking: str,
    budget: int,
    effort: str,
    max_tokens: int,
    structured: bool,
    system_simple: bool,
    conv: _Conversation,
) -> float:
    """Combine the signals into 0-100. Weights are round on purpose: each says how much one
    piece of evidence should move a request, not a fit to any data set."""
    score = 40.0
    # What the task itself asks.
    score += 14 * min(sig.hard, 3)
    if sig.proof:
        # Textbook proofs are routine for every tier; what makes one olympiad-hard shows up as
        # specialist vocabulary, thinking asked for, or a large output budget.
        score += 4 if sig.brevity else 12
    if sig.math:
        score += 4
    score += 5 * min(sig.reasoning, 6)
    score += 2 * max(0, min(sig.steps, 10) - 2)
    score += min(10.0, sig.prose_words / 25)
    score -= 12 * min(sig.simple, 3)
    if sig.brevity:
        score -= 10
    if sig.basics:
        score -= 8  # pitched at a beginner: well-trodden material
    substantial = sig.hard > 0 or sig.proof or sig.reasoning >= 2 or sig.prose_words >= 60
    if sig.explain and not sig.brevity:
        score += 6  # writing, explaining, implementing: generative work, not a lookup
    opener = conv.user_turns <= 1
    if task_chars < 100 and opener and not (substantial or sig.reasoning or sig.explain):
        # A one-line opener with no analysis words is a question or a command. Later in a
        # conversation a short turn ("2. hide it") continues work of the thread's size.
        score -= 10
    if system_simple:
        score -= 10
    if structured:
        score -= 10
    # What the client asked the model to spend. A short plain ask does not become hard because
    # an app turns thinking on for every request, so these count fully only for real tasks.
    weight = 1.0 if substantial else 0.4
    if thinking != "none":
        score += 12 * weight
    if budget >= 6000 or effort in ("high", "xhigh", "max"):
        score += 4 * weight
    if effort in ("xhigh", "max"):
        score += 4 * weight
    elif effort == "low":
        score -= 8
    if max_tokens >= 8000:
        score += 4 * weight
    if max_tokens >= 16000:
        score += 4 * weight
    if 0 < max_tokens <= 128:
        score -= 25  # no room for reasoning in the answer: a label, a number, a name
    elif 0 < max_tokens <= 300:
        score -= 15
    elif 0 < max_tokens <= 700:
        score -= 8
    # Agent loops: depth means an investigation is under way; a single clean result is a relay.
    depth = conv.tool_loop_depth
    if depth >= 3:
        score += 6 * min(depth - 2, 4)
        if conv.history_thinking:
            score += 4
    if conv.tool_errors:
        score += 4 * min(conv.tool_errors, 2)
    if depth == 1 and conv.tool_results and not conv.tool_errors and conv.tool_result_chars < 600:
        score -= 6
    return max(0.0, min(100.0, score))


def _level(score: float) -> str:
    if score < SIMPLE_BELOW:
        return "simple"
    if score >= COMPLEX_FROM:
        return "complex"
    return "moderate"


# -- entry point ---------------------------------------------------------------------------------


def classify(
    parsed: Parsed, estimate: TokenEstimate, *, token_factor: float, requested_tier: str
) -> Features:
    """Compute the routing features of a parsed request.

    Pure: no I/O, no clock, no shared state. Reads the whole message list only for cheap
    structural facts; text is read from the task turn alone, through bounded windows.

    Args:
        parsed: The decoded request and its headers.
        estimate: Raw token counts from :class:`router.routing.tokens.TokenCounter`.
        token_factor: Scale from raw counts to the target model's tokens (config or learned).
        requested_tier: Tier of the requested model (``haiku``/``sonnet``/``opus``/``other``).

    Returns:
        The features routing rules test.
    """
    request = parsed.request
    headers = parsed.headers
    conv = _conversation(request.messages)
    task_text = _user_text(conv.task_content) if conv.task_content is not None else ""
    task_chars = _full_length(conv.task_content) if conv.task_content is not None else 0
    sig = _task_signals(task_text, task_chars)

    thinking_block = request.thinking or {}
    kind = thinking_block.get("type")
    thinking = kind if kind in ("enabled", "adaptive") else "none"
    raw_budget = thinking_block.get("budget_tokens")
    budget = raw_budget if isinstance(raw_budget, int) and thinking == "enabled" else 0
    output = request.output_config or {}
    raw_effort = output.get("effort")
    effort = raw_effort if isinstance(raw_effort, str) else ""
    choice = request.tool_choice or {}
    raw_choice = choice.get("type")
    tool_choice = raw_choice if isinstance(raw_choice, str) else ""
    structured = (
        bool(output.get("format")) or tool_choice in ("tool", "any") or conv.last_turn == "prefill"
    )
    system_head = _system_head(request.system)
    # A short task-spec system prompt ("Classify... Reply with one word") makes every turn a
    # mechanical one; a persona or agent prompt does not match these and changes nothing.
    system_view = _view(system_head) if system_head else None
    system_simple = system_view is not None and (
        _count_kinds(_SIMPLE[_EXTRACT : _CLASSIFY + 1], system_view) > 0
        or _SYSTEM_SPEC.found(system_view)
    )
    max_tokens = request.max_tokens if isinstance(request, MessagesRequest) else 0

    score = _score(
        sig,
        task_chars=task_chars,
        thinking=thinking,
        budget=budget,
        effort=effort,
        max_tokens=max_tokens,
        structured=structured,
        system_simple=system_simple,
        conv=conv,
    )
    metadata = request.metadata if isinstance(request, MessagesRequest) else None
    raw_user = (metadata or {}).get("user_id")
    tools = request.tools or []
    return Features(
        input_tokens=round(estimate.tokens * token_factor),
        max_tokens=max_tokens,
        system_tokens=estimate.system,
        complexity_score=round(score, 1),
        complexity=_level(score),
        hard_markers=sig.hard,
        reasoning_markers=sig.reasoning,
        simple_markers=sig.simple,
        proof=sig.proof,
        math=sig.math,
        brevity=sig.brevity,
        basics=sig.basics,
        steps=sig.steps,
        code_lines=sig.code_lines,
        data_lines=sig.data_lines,
        prose_words=sig.prose_words,
        task_chars=task_chars,
        task_from_history=conv.task_from_history,
        structured_output=structured,
        messages=len(request.messages),
        user_turns=conv.user_turns,
        last_turn=conv.last_turn,
        tools=len(tools),
        tool_names=tuple(t["name"] for t in tools if isinstance(t.get("name"), str)),
        tool_choice=tool_choice,
        tool_calls=conv.tool_calls,
        tool_results=conv.tool_results,
        tool_errors=conv.tool_errors,
        tool_result_chars=conv.tool_result_chars,
        tool_loop_depth=conv.tool_loop_depth,
        images=estimate.image_count,
        documents=estimate.document_count,
        thinking=thinking,
        thinking_budget=budget,
        history_thinking=conv.history_thinking,
        effort=effort,
        stream=parsed.stream,
        requested_model=request.model,
        requested_tier=requested_tier,
        app=headers.get("x-app", ""),
        user_agent=headers.get("user-agent", ""),
        user_id=raw_user if isinstance(raw_user, str) else "",
        session_id=headers.get("x-claude-code-session-id", ""),
        api_key_alias="",
    )
