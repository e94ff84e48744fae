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

import ast
import inspect
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, Final

from router.parse import Parsed
from router.tokens import TokenEstimate
from router.wire import Block, MessageParam, MessagesRequest

COMPLEXITY_LEVELS: Final = ("simple", "moderate", "complex")
SIMPLE_BELOW: Final = 30.0
"""``complexity_score`` below this is ``simple``."""
COMPLEX_FROM: Final = 60.0
"""``complexity_score`` at or above this is ``complex``."""


@dataclass(frozen=True, slots=True)
class Features:
    """What routing rules can test about one request. All fields are plain values."""

    # -- size --
    input_tokens: int
    """Estimated input tokens (system, tools, messages, images, documents), already scaled by the
    model's token factor."""
    max_tokens: int
    """``max_tokens`` the client asked for (0 for count_tokens)."""
    system_tokens: int
    """Unscaled tokens of the system prompt alone."""

    # -- complexity --
    complexity_score: float
    """0-100 judgement of how hard the task is; ``complexity`` buckets it (<30 simple,
    >=60 complex)."""
    complexity: str
    """``simple``, ``moderate`` or ``complex``."""
    hard_markers: int
    """Kinds of specialist depth named in the task (formal methods, concurrency, distributed
    consistency, security analysis, theory, advanced maths/science, algorithm bounds)."""
    reasoning_markers: int
    """Kinds of analysis asked for (design, trade-offs, diagnosis, planning, critique,
    justification, performance, cross-cutting implications, refactoring)."""
    simple_markers: int
    """Kinds of mechanical work asked for (extract, classify, transform/format, translate a short
    text, look up one fact, small talk)."""
    proof: bool
    """The task asks for a proof or a derivation."""
    math: bool
    """The task contains maths notation or vocabulary."""
    brevity: bool
    """The task asks for a short answer (one word/line, just the number, a few lines)."""
    basics: bool
    """The task is pitched at beginners (a junior, a student, simple terms): textbook level."""
    steps: int
    """Distinct asks in the instruction: questions, numbered or bulleted requests, imperative
    sentences."""
    code_lines: int
    """Lines that look like code in the task text (sampled window)."""
    data_lines: int
    """Lines that look like pasted data (CSV, logs, JSON) in the task text (sampled window)."""
    prose_words: int
    """Words of instruction prose in the task text (code and data lines excluded)."""
    task_chars: int
    """Characters of the task message's text, in full."""
    task_from_history: bool
    """The latest user turn held only tool results, so the task is an earlier user turn."""
    structured_output: bool
    """The output is constrained: a JSON schema format, a forced tool choice or a prefill."""

    # -- shape --
    messages: int
    """Number of messages."""
    user_turns: int
    """User messages with text (tool-result-only turns excluded)."""
    last_turn: str
    """What the last message is: ``text`` (user text), ``tool_result`` or ``prefill``
    (assistant)."""
    tools: int
    """Number of tool definitions."""
    tool_names: tuple[str, ...]
    """Names of the defined tools (server tools by their ``name``)."""
    tool_choice: str
    """``tool_choice.type`` (``auto``, ``any``, ``tool``, ``none``) or empty."""
    tool_calls: int
    """``tool_use`` blocks in the whole conversation."""
    tool_results: int
    """``tool_result`` blocks in the latest user turn."""
    tool_errors: int
    """Latest tool results flagged ``is_error`` or that read like a failure."""
    tool_result_chars: int
    """Characters of text in the latest tool results."""
    tool_loop_depth: int
    """Consecutive trailing rounds of assistant ``tool_use`` answered by user ``tool_result``."""
    images: int
    """Image blocks anywhere in the request."""
    documents: int
    """Document blocks anywhere in the request."""
    thinking: str
    """``none``, ``enabled`` or ``adaptive``."""
    thinking_budget: int
    """``thinking.budget_tokens`` (0 when absent)."""
    history_thinking: bool
    """Earlier assistant turns carry ``thinking`` or ``redacted_thinking`` blocks."""
    effort: str
    """``output_config.effort`` (``low`` ... ``max``) or empty."""
    stream: bool
    """The client asked for SSE."""
    requested_model: str
    """The ``model`` the client asked for."""
    requested_tier: str
    """Tier of the requested model: ``haiku``, ``sonnet``, ``opus`` or ``other``."""

    # -- who --
    app: str
    """The ``x-app`` header (e.g. ``cli`` for Claude Code)."""
    user_agent: str
    """The ``user-agent`` header."""
    user_id: str
    """``metadata.user_id``."""
    session_id: str
    """The ``x-claude-code-session-id`` header."""
    api_key_alias: str
    """Alias of the API key used (not resolved yet: always empty)."""


def feature_names() -> tuple[str, ...]:
    """Return the names of all :class:`Features` fields, in declaration order."""
    return tuple(f.name for f in fields(Features))


@cache
def feature_docs() -> Mapping[str, str]:
    """Return each :class:`Features` field's docstring, for ``router explain`` and rule checks.

    Read from this module's source (attribute docstrings are not kept at runtime); empty when the
    source is not available, e.g. in a zipped install.
    """
    try:
        tree = ast.parse(inspect.getsource(Features))
    except (OSError, TypeError, SyntaxError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


# -- text sampling -------------------------------------------------------------------------------

_BLOCK_FULL: Final = 4000
"""Text blocks up to this length are read whole; longer ones by head and tail."""
_HEAD: Final = 1500
_TAIL: Final = 1500
_TASK_MAX: Final = 9000
"""Most characters of task text examined."""
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


def _has_type(content: str | list[Block], kinds: frozenset[str]) -> bool:
    return not isinstance(content, str) and any(b.get("type") in kinds for b in content)


_TOOL_USE: Final = frozenset({"tool_use", "server_tool_use"})
_TOOL_RESULT: Final = frozenset({"tool_result"})
_THINKING: Final = frozenset({"thinking", "redacted_thinking"})


# -- vocabulary ----------------------------------------------------------------------------------
# General vocabulary for what a request asks, in English plus the commonest other languages.
# Each list is a set of *kinds*: a kind counts once however often it matches, so a pasted
# document that repeats a word cannot inflate a score.


def _kinds(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


_PROOF = re.compile(
    r"\b(?:prove|proofs?|proving|derive|derivation|theorem|lemma|corollary|rigou?r(?:ous(?:ly)?)?"
    r"|olympiad|imo|putnam|q\.e\.d)\b|证明|證明|証明|démontr|beweis|demostr|dimostr|доказ",
    re.IGNORECASE,
)
_MATH = re.compile(
    r"[∀∃∑∫√≥≤≠∈⊂⊆ℝℕℤℚℂΣπ²³]|\b[a-z]\s*\^\s*\d|\b(?:f|g)\s*\(\s*[a-z]\s*\)"
    r"|\b(?:integral|derivative|equations?|inequalit\w*|polynomial|matri(?:x|ces)|eigen\w*"
    r"|prime|primes|probabilit\w*|stochastic|differential|modulo|divisib\w*|real numbers"
    r"|functional equation|asymptotic\w*|convergen\w*)\b",
    re.IGNORECASE,
)
_HARD = _kinds(
    # formal methods
    r"\btla\+|\bcoq\b|\bisabelle\b|\blean ?4\b|\bformal(?:ly)? (?:spec|model|verif|semantic|proof)"
    r"|model[- ]check|\binvariants?\b|liveness propert|safety propert|temporal logic"
    r"|weak fairness|strong fairness",
    # concurrency
    r"lock[- ]free|wait[- ]free|lockless|memory[ _]order|happens[- ]before|linearizab"
    r"|compare[-_ ]and[-_ ]swap|\baba\b|data race|race condition|deadlock|\batomics?\b"
    r"|interleaving|contention|double[- ]free|use[- ]after[- ]free|memory model",
    # distributed consistency
    r"\bconsensus\b|\bpaxos\b|\braft\b|byzantine|exactly[- ]once|active[- ]active|multi[- ]region"
    r"|split[- ]brain|\bquorum|\bcrdt|serializab|isolation level|two[- ]phase commit|\b2pc\b",
    # security analysis
    r"threat model|attack (?:path|surface|tree|vector)|cryptograph|key exchange|forward secrecy"
    r"|side[- ]channel|replay attack|\bnonce\b|privilege escalation|\bexploit",
    # theory of computation and languages
    r"undecidab|np[- ](?:hard|complete)|complexity class|reduction from|turing machine"
    r"|arithmetical hierarchy|recursively enumerable|[σΣπΠ][₀-₉0-9]|type inference|unification"
    r"|type system|polymorphism|lambda calculus|category theory|operational semantics",
    # advanced maths, statistics and science
    r"stochastic|\bpdes?\b|partial differential|characteristic function|bifurcation"
    r"|stability analysis|next[- ]generation matrix|markov|bayesian|posterior|causal"
    r"|confound|instrumental variable|difference[- ]in[- ]differences|selection bias|survival"
    r"|functional equation|for all (?:real|positive|integers)",
    # algorithm and data-structure bounds
    r"amortized|worst[- ]case|\bo\((?:log|n|1)|persistent (?:data structure|tree)|path copying"
    r"|segment tree|fenwick|suffix (?:array|tree)|dynamic programming|approximation ratio",
)
_REASONING = _kinds(
    # design and architecture
    r"\bdesign(?:s|ing)?\b|architect|system design|data model|\bschema\b",
    # trade-offs and comparison
    r"trade-?offs?|pros and cons|\bcompare\b|comparison|\bversus\b|(?-i:\bvs\b)|alternatives?"
    r"|which (?:approach|option|design)|\bor\b.{0,40}\?",
    # diagnosis
    r"diagnos|root cause|investigat|figure out|hypothes[ie]s|\bexperiments?\b|\bcauses\b"
    r"|what'?s (?:going on|causing|happening)|why (?:is|does|did|do|are|would)|regression"
    r"|\bflaky\b",
    # planning and migration
    r"\bplan\b|planning|roadmap|\bmigrat|rollout|roll-out|incremental|phased|sequenc|prioriti"
    r"|in (?:priority )?order|\brank(?:ed|ing)?\b|step[- ]by[- ]step",
    # critique and risk
    r"critique|\bcritic|evaluate|assess|\baudit|weakness|\bflaws?\b|vulnerab|\brisks?\b"
    r"|pitfall|failure modes?|what could go wrong|tear (?:it|this) apart|edge cases",
    # justification and recommendation
    r"justify|justif|rationale|\breasoning\b|\bargue|argument|recommend|recommand|empfehl"
    r"|explain (?:why|how)|decide|decision|mechanisms?\b",
    # performance and scale
    r"scalab|\bat scale\b|throughput|latency|\bp9[59]\b|bottleneck|performance|optimi[sz]",
    # cross-cutting implications
    r"implica|consequen|interact|\bacross\b|end[- ]to[- ]end"
    r"|cross[- ](?:cutting|domain|team|border)|strateg|jurisdiction|holistic"
    r"|dependency graph|dependencies",
    # refactoring and restructuring
    r"refactor|restructur|re-?architect|decoupl|moduli[sz]|\bsplit (?:the|our|it)|monolith",
    # breadth: the change spans many parts
    r"\b(?:all|every|each) (?:of )?(?:our |the |your )?(?:repos|repositories|services|microservices"
    r"|modules|packages|handlers|files|tables|teams|endpoints|call ?sites)\b|codebase[- ]wide"
    r"|\bper (?:repo|repository|service|module|team)\b",
    # hard constraints the work must respect
    r"\b(?:don'?t|do not|must not|never|without) (?:break|breaking|los(?:e|ing)|downtime|regress)"
    r"|zero[- ]downtime|backwards?[- ]compatib|(?:stays?|remains?|keep\w*) (?:\w+ ){0,4}identical"
    r"|\bunchanged\b",
    # other languages' analysis vocabulary
    r"analy[sz]|analis|análisis|analyse|untersuch|évalu|évalue|評価|分析|比较",
)
_EXTRACT, _CLASSIFY, _TRANSFORM, _TRANSLATE, _LOOKUP, _SMALLTALK = range(6)
_SHORT_TEXT: Final = 400
"""Tasks up to this many characters count a translation as a simple one."""
_SIMPLE = _kinds(
    # extraction and parsing
    r"\bextract|extrai|extrah|pull out|pull (?:every|all)|\bparse\b|\bocr\b|into json|as json"
    r"|to json|json only|output json|return json|return \{|json object",
    # classification, labelling, routing
    r"classif|categori[sz]|\blabel|\btags?\b|sentiment|\bintent\b|\bpriority\b|triage"
    r"|route (?:it|this|each|the)|which (?:language|category|queue|department|team)"
    r"|language is this|detect the language|what language|spam or"
    r"|is this (?:spam|positive|negative)",
    # mechanical transformation
    r"\bconvert|reformat|format (?:this|it|as)|\brename\b|\breplace\b|normali[sz]|redact"
    r"|anonymi|de-?dup|\bsort\b|lowercase|uppercase|capitali"
    r"|fix (?:the |my )?(?:grammar|spelling|typos?|punctuation)|proofread|rephrase|reword"
    r"|more polite|politely|markdown table|into a table|to yaml|to csv|passive voice|active voice"
    r"|title case|sentence case|(?:past|present|future) tense|(?:comma|tab|semicolon)[- ]separated"
    r"|one per line|改成|書き換|umschreib",
    # translation (only counted for short texts: see _TRANSLATION)
    r"translat|übersetz|tradu[cz]|翻译|翻訳|перевед",
    # lookup of a single fact: the whole ask, or a closing question about material given above
    r"^\s*(?:what|which|who|when|where|how (?:many|much|long|old|do you say)|is|are|does|was"
    r"|wie viele|qu[ée]|cu[áa]nt|combien)\b[^\n]{0,80}\Z"
    r"|(?:^|\n)\s*(?:what|which|who|when|where|how (?:many|much)|is|are|does|do|can|was|were)\b"
    r"[^\n?]{0,90}\?\s*\Z|\bsynonyms?\b|\bantonyms?\b|\bdefin(?:e|ition)\b|\bmeaning of\b"
    r"|\bstand for\b|\bacronym|\babbreviation|\bcapital of\b|\bhow (?:do you|to) spell\b"
    r"|\bhow many\b",
    # pleasantries and recall of something already said
    r"^\s*(?:thanks|thank you|thx|ty|ok(?:ay)?|great|perfect|cool|got it|awesome|nice|cheers"
    r"|merci|danke|gracias|hi|hello|hey|good (?:morning|afternoon|evening)|bonjour|hola|hallo)\b"
    r"[^\n]{0,60}\Z|\bagain\?|remind me|what was (?:the|that)",
)
_BREVITY = re.compile(
    r"\b(?:one|single|1)[- ](?:word|line|sentence|number|liner)\b|\bin one line\b"
    r"|\bjust (?:the|a|one) (?:number|name|answer|word|code|command|value|letter)"
    r"|\b(?:reply|answer|respond|output) (?:with |in )?(?:only|just|exactly|one)\b"
    r"|\bonly (?:the|output|return|answer|reply)\b|\byes or no\b|\byes/no\b|\btrue or false\b"
    r"|\b[1-9]\s*[-–]\s*[1-9] (?:words?|lines|sentences|bullets)\b"
    r"|\b(?:[1-3]?[0-9]|40)\s*[-–]\s*(?:[1-4]?[0-9]|50) words\b|\bunder (?:[1-4]?[0-9]|50) words\b"
    r"|\bquick(?:ly)?\b|\bbriefly\b|\bkeep it short\b|\bshort answer\b|\b(?:a|the) title for\b"
    r"|\bcommit message\b"
    r"|\bone decimal\b|\bno explanation|\bjust (?:tell|give)|\bfor a slide\b",
    re.IGNORECASE,
)
_EXPLAIN = re.compile(
    r"\b(?:why|how (?:do|does|did|can|should|would|to)|explain|describe|walk (?:me )?through"
    r"|help me|write|rewrite|draft|implement|create|build|review|improve|suggest|summar|simplify"
    r"|plain (?:english|language)|what'?s wrong|fix|add|change|update|port|set up|configure"
    r"|debug)\b|erkl|expliqu|説明|解释|教えて",
    re.IGNORECASE,
)
_ASK_SPLIT = re.compile(
    # A question, or an imperative verb opening a clause ("Rank causes, explain each, and give
    # the fix" is three asks). List items count only when they start with such a verb, so a
    # pasted list of products or facts is not mistaken for a list of requests.
    r"\?|(?:^|[.!?;:]\s+|\band\s+|,\s+)(?:\(?\d+[.)]\s*|\([a-z]\)\s*|[-*•]\s*)?"
    r"(?:give|list|show|explain|describe|design|propose|identify|compare|derive|prove|write|include"
    r"|rank|recommend|analy[sz]e|estimate|walk through|discuss|find|flag|tell|suggest|add|draft"
    r"|summari[sz]e|outline|evaluate|assess|justify|plan|diagnose|review|implement|fix|say|rename"
    r"|convert|extract|translate|classify|categori[sz]e|format|rewrite|refactor|migrate"
    r"|investigate|check|create|build|turn|pull|redact|parse|answer|critique|resume|résume"
    r"|traduis|traduce|übersetze|fasse|erkläre|explique|analyse)\b",
    re.IGNORECASE | re.MULTILINE,
)
_REQUEST = re.compile(
    r"\b(?:please|pls|can you|could you|would you|i need|i want|i'd like|help me|give me|tell me"
    r"|let me know|bitte|s'il (?:te|vous) pla[iî]t|por favor)\b|请|ください",
    re.IGNORECASE,
)
_CODE_LINE = re.compile(
    r"^(?:[ \t]{2,}\S.*|.*[;{}]\s*|.*\w\([^()]*\)\s*:?\s*|```.*"
    r"|\s*(?:def|class|import|from \S+ import|function|const|let|var|return|if|for|while|func"
    r"|package|public|private|#include|template|select|insert|update|create|alter|with)\b.*"
    r"|(?:@@|\+\+\+|---|diff --git) .*)$",
    re.MULTILINE,
)
_DATA_LINE = re.compile(
    r"^(?:[^ \n,]*,[^ \n,]*,.*|\s*[\[{\"].*|\d{4}-\d\d-\d\d[T ]\d.*|\[\d.*|\S+=\S+ \S+=\S+.*)$",
    re.MULTILINE,
)
_BASICS = re.compile(
    r"\b(?:beginners?|junior|newbies?|for (?:a )?kids?|eli5|simple terms|lay(?:man|person|people)"
    r"|high[- ]school|my teacher|introduct(?:ion|ory)|basics)\b|初心者|新手|入门|Anfänger|débutant",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_INSTRUCTION_FULL: Final = 1000
"""Prose up to this many characters is read as instruction in full."""
_INSTRUCTION_PART: Final = 700
"""Otherwise the first and the last paragraph, each cut to this."""
_SYSTEM_SPEC = re.compile(
    r"\b(?:reply|respond|answer|output|return)\s+(?:with\s+)?(?:only|exactly|just|one)\b"
    r"|\bonly (?:output|return|reply|answer)\b|\boutput (?:json|only)\b|\bone word\b",
    re.IGNORECASE,
)
_SYSTEM_SPEC_MAX: Final = 2500
"""System prompts longer than this are personas or agent harnesses, not a task spec."""
_TOOL_FAILURE = re.compile(
    r"traceback|exception|\berror\b|\bfailed\b|\bfailures?\b|\bfail\b|panic:|fatal|denied"
    r"|not found|exit (?:code|status) [1-9]|conflict|mismatch|timed? ?out|warn",
    re.IGNORECASE,
)


def _count_kinds(patterns: Sequence[re.Pattern[str]], text: str) -> int:
    return sum(1 for p in patterns if p.search(text))


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


def _conversation(messages: Sequence[MessageParam]) -> _Conversation:
    last = messages[-1] if messages else None
    if last is None:
        last_turn = "text"
    elif last.role == "assistant":
        last_turn = "prefill"
    elif _has_type(last.content, _TOOL_RESULT) and not _user_text(last.content):
        last_turn = "tool_result"
    else:
        last_turn = "text"

    user_turns = tool_calls = 0
    history_thinking = False
    for message in messages:
        content = message.content
        if message.role == "user":
            if isinstance(content, str) or any(b.get("type") == "text" for b in content):
                user_turns += 1
        elif not isinstance(content, str):
            for block in content:
                kind = block.get("type")
                if kind in _TOOL_USE:
                    tool_calls += 1
                elif kind in _THINKING:
                    history_thinking = True

    # Latest user turn's tool results: how many, how big, whether they read like failures.
    results = errors = chars = 0
    latest_user = next((m for m in reversed(messages) if m.role == "user"), None)
    if latest_user is not None and not isinstance(latest_user.content, str):
        for block in latest_user.content:
            if block.get("type") != "tool_result":
                continue
            results += 1
            text = _result_text(block.get("content"))
            chars += len(text)
            if block.get("is_error") is True or (
                results <= _RESULTS_SAMPLED and _TOOL_FAILURE.search(text[:_RESULT_SAMPLE])
            ):
                errors += 1

    depth = 0
    i = len(messages) - 1
    if last is not None and last.role == "assistant":
        i -= 1  # a prefill after a tool loop does not end the loop
    while i >= 1:
        user, assistant = messages[i], messages[i - 1]
        if not (
            user.role == "user"
            and assistant.role == "assistant"
            and _has_type(user.content, _TOOL_RESULT)
            and _has_type(assistant.content, _TOOL_USE)
        ):
            break
        depth += 1
        i -= 2

    task: str | list[Block] | None = None
    from_history = False
    for back, message in enumerate(reversed(messages)):
        if back >= _SCAN_BACK:
            break
        if message.role != "user":
            continue
        if _user_text(message.content):
            task = message.content
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
    asking = [p for p in (head, tail) if _REQUEST.search(p) or _ASK_SPLIT.search(p)]
    return "\n\n".join(asking or (head, tail))


def _task_signals(text: str, task_chars: int) -> _TaskSignals:
    code_lines = len(_CODE_LINE.findall(text))
    data_lines = len(_DATA_LINE.findall(text))
    prose = _DATA_LINE.sub("", _CODE_LINE.sub("", text)) if code_lines or data_lines else text
    ask = _instruction(prose)
    # The domain shows anywhere (a protocol described in the material is still cryptography);
    # what is asked, and how much, is read from the instruction alone.
    reasoning = _count_kinds(_REASONING, ask)
    simple = [bool(p.search(ask)) for p in _SIMPLE]
    if task_chars > _SHORT_TEXT:
        simple[_TRANSLATE] = False  # translating a page is drafting work, not a lookup
    if reasoning:
        simple[_LOOKUP] = False  # "what are the trade-offs of X?" is a question, not a fact
    simple_kinds = sum(simple)
    # "Rewrite this sentence in the passive voice" uses a writing verb for a mechanical edit.
    explain = bool(_EXPLAIN.search(ask)) and not (simple_kinds and task_chars < 200)
    return _TaskSignals(
        hard=_count_kinds(_HARD, prose),
        reasoning=reasoning,
        simple=simple_kinds,
        proof=bool(_PROOF.search(prose)),
        math=bool(_MATH.search(prose)),
        brevity=bool(_BREVITY.search(ask)),
        basics=bool(_BASICS.search(ask)),
        explain=explain,
        steps=len(_ASK_SPLIT.findall(ask)),
        code_lines=code_lines,
        data_lines=data_lines,
        prose_words=len(_WORD.findall(ask)),
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
        estimate: Raw token counts from :class:`router.tokens.TokenCounter`.
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
    system_simple = bool(system_head) and (
        _count_kinds(_SIMPLE[_EXTRACT : _CLASSIFY + 1], system_head) > 0
        or bool(_SYSTEM_SPEC.search(system_head))
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
