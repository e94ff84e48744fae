"""Reading the task: the text a request asks about, and what its words and lines say.

The task is the latest user turn that has real text (after removing the ``<system-reminder>``
blocks agents resend every turn). Long pastes are sampled at their head and tail, where the
instruction usually is, so the work per request is bounded no matter how long the text. Within
the task, code and data lines are told from prose, and the instruction is told from pasted
material: the domain shows anywhere in the prose, but what is asked, and how much, is read from
the instruction alone.

Pure: no I/O, no clock, no state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from router.routing.lexicon import (
    ASK_VERBS,
    BASICS,
    BIG_O,
    BREVITY,
    BREVITY_RANGE,
    BREVITY_UNDER,
    CLASSIFY,
    CLAUSE,
    EXPLAIN,
    EXTRACT,
    HARD,
    HOW_LOOKUP,
    LAST_QUESTION_START,
    LIST_MARKS,
    LOOKUP,
    MATH,
    PROOF,
    QUESTION_START,
    REASONING,
    REQUEST,
    SIMPLE,
    SMALLTALK,
    SMALLTALK_START,
    STEP_AFTER,
    SYSTEM_SPEC,
    TRANSLATE,
    View,
    count_kinds,
    has_notation,
    split_words,
    view,
    wordset,
)
from router.wire import Block

_BLOCK_FULL: Final = 4000
"""Text blocks up to this length are read whole; longer ones by head and tail."""
_HEAD: Final = 1500
_TAIL: Final = 1500
_TASK_MAX: Final = 6000
"""Most characters of task text examined."""
_DOMAIN_MAX: Final = 3000
"""Most characters of prose searched for specialist vocabulary."""
_SHORT_TEXT: Final = 400
"""Tasks up to this many characters count a translation as a simple one."""
_SYSTEM_SPEC_MAX: Final = 2500
"""System prompts longer than this are personas or agent harnesses, not a task spec."""

REMINDER = re.compile(
    r"<system-reminder>.*?(?:</system-reminder>|\Z)|\A.*?</system-reminder>", re.DOTALL
)


def _window(text: str) -> str:
    if len(text) <= _BLOCK_FULL:
        return text
    return text[:_HEAD] + "\n\n" + text[-_TAIL:]


def user_text(content: str | list[Block]) -> str:
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
        text = REMINDER.sub("", text)
    text = text.strip()
    if len(text) > _TASK_MAX:
        text = text[: _TASK_MAX // 2] + "\n\n" + text[-_TASK_MAX // 2 :]
    return text


def full_length(content: str | list[Block]) -> int:
    """Characters the user wrote in a message: its text, less the harness's reminders."""
    texts = [content] if isinstance(content, str) else [
        b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    return sum(_without_reminders(t) for t in texts)


def _without_reminders(text: str) -> int:
    # Reminders are small; a huge block is a paste, measured as it is.
    if len(text) > _BLOCK_FULL * 4 or "system-reminder>" not in text:
        return len(text)
    return len(REMINDER.sub("", text).strip())


_CODE_START = wordset(
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
class TaskSignals:
    """What the task text asks, read from its words and lines."""

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
    tokens = split_words(line.lower())[:2]
    if not tokens:
        return False
    if tokens[0] == "how":
        return len(tokens) > 1 and tokens[1] in HOW_LOOKUP
    return tokens[0] in starters



def _is_lookup(ask: str, view: View) -> bool:
    """A question after one fact: the whole ask ("which http code is 'too many requests'"), or a
    closing question about material given above ("... Can I return a gift card?")."""
    if SIMPLE[LOOKUP].found(view):
        return True
    text = ask.strip()
    if "\n" not in text and len(text) <= 100 and _starts_question(text, QUESTION_START):
        return True
    last = text.rsplit("\n", 1)[-1].strip()
    return last.endswith("?") and len(last) <= 100 and _starts_question(last, LAST_QUESTION_START)


def _is_smalltalk(ask: str, view: View) -> bool:
    """Thanks, greetings, or asking for something already said."""
    if SIMPLE[SMALLTALK].found(view) or "again?" in view.text:
        return True
    text = ask.strip()
    return (
        len(text) <= 70
        and "\n" not in text
        and bool(view.tokens)
        and view.tokens[0] in SMALLTALK_START
    )


def _is_brief(view: View) -> bool:
    """The ask wants a short answer: one word or line, just the number, a few sentences."""
    if BREVITY.found(view):
        return True
    if not any(unit in view.text for unit in ("word", "line", "sentence", "bullet")):
        return False
    for found in BREVITY_RANGE.finditer(view.text):
        most, unit = int(found.group(2)), found.group(3)
        if most <= (50 if unit.startswith("word") else 5):
            return True
    under = BREVITY_UNDER.search(view.text)
    return under is not None and int(under.group(1)) <= 50


def _steps(view: View) -> int:
    """Questions plus clauses that open with an imperative ("Rank causes, explain each, and give
    the fix" is three). A pasted list of products is not a list of requests: its items do not
    start with such verbs."""
    steps = view.text.count("?")
    for clause in CLAUSE.split(view.text):
        for word in clause.split(None, 3):
            word = word.strip(LIST_MARKS)
            if word and word not in STEP_AFTER:
                steps += word in ASK_VERBS
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
    seen = view(text)
    return "?" in text or REQUEST.found(seen) or _steps(seen) > 0


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


_READ_KEPT: Final = 4096
"""Task texts whose signals are remembered (a few hundred bytes each, the text not kept)."""

TaskMemo = dict[tuple[int, int, int], TaskSignals]
"""Signals already read, by task text: owned by the app (``RouterState.tasks``)."""


def read_task(text: str, task_chars: int, *, seen: TaskMemo | None = None) -> TaskSignals:
    """Read the signals of a task text (already sampled by :func:`user_text`).

    An agent loop resends the same task turn with every tool result, so the signals are
    remembered in ``seen`` (by the text's hash, as the token counter does, so no text is kept),
    the oldest forgotten past 4,096 entries.

    Args:
        text: the task's sampled text.
        task_chars: the length of its full text.
        seen: signals already read, by text; None reads the text afresh.
    """
    if seen is None:
        return _read_task(text, task_chars)
    key = (hash(text), len(text), task_chars)
    found = seen.get(key)
    if found is None:
        found = seen[key] = _read_task(text, task_chars)
        if len(seen) > _READ_KEPT:
            del seen[next(iter(seen))]
    return found


def _read_task(text: str, task_chars: int) -> TaskSignals:
    code_lines, data_lines, prose = _split_lines(text)
    ask = _instruction(prose)
    asked = view(ask)
    # The domain shows anywhere (a protocol described in the material is still cryptography);
    # what is asked, and how much, is read from the instruction alone.
    if len(prose) > _DOMAIN_MAX:
        prose = prose[: _DOMAIN_MAX // 2] + "\n" + prose[-_DOMAIN_MAX // 2 :]
    domain = asked if prose == ask else view(prose)
    hard = count_kinds(HARD, domain)
    if not HARD[-1].found(domain) and "o(" in domain.text and BIG_O.search(domain.text):
        hard += 1
    reasoning = count_kinds(REASONING, asked)
    simple = [lexicon.found(asked) for lexicon in SIMPLE]
    simple[LOOKUP] = _is_lookup(ask, asked)
    simple[SMALLTALK] = _is_smalltalk(ask, asked)
    if task_chars > _SHORT_TEXT:
        simple[TRANSLATE] = False  # translating a page is drafting work, not a lookup
    if reasoning:
        simple[LOOKUP] = False  # "what are the trade-offs of X?" is a question, not a fact
    simple_kinds = sum(simple)
    # "Rewrite this sentence in the passive voice" uses a writing verb for a mechanical edit.
    explain = EXPLAIN.found(asked) and not (simple_kinds and task_chars < 200)
    return TaskSignals(
        hard=hard,
        reasoning=reasoning,
        simple=simple_kinds,
        proof=PROOF.found(domain),
        math=MATH.found(domain) or has_notation(domain.text),
        brevity=_is_brief(asked),
        basics=BASICS.found(asked),
        explain=explain,
        steps=_steps(asked),
        code_lines=code_lines,
        data_lines=data_lines,
        prose_words=_words(ask, asked),
    )


_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
"""Kana, CJK ideographs and Hangul: scripts whose words are not separated by spaces."""


def _words(text: str, seen: View) -> int:
    """Words of a text in any script: split on spaces, plus one word per two characters of the
    scripts written without them (ASCII text: its words as the lexicons see them)."""
    if text.isascii():
        return len(seen.tokens)
    return len(text.split()) + len(_UNSPACED.findall(text)) // 2


def system_is_spec(system: str | list[Block] | None) -> bool:
    """Whether a short system prompt states a mechanical task ("Classify ... Reply with one
    word"): every turn is then a mechanical one. Personas and agent harnesses never match, and
    a system prompt never raises complexity."""
    head = _system_head(system)
    if not head:
        return False
    seen = view(head)
    return count_kinds(SIMPLE[EXTRACT : CLASSIFY + 1], seen) > 0 or SYSTEM_SPEC.found(seen)


def _system_head(system: str | list[Block] | None) -> str:
    """The opening of a short system prompt, where a task-spec prompt states the job; empty for
    long prompts."""
    if isinstance(system, str):
        return system[:400] if len(system) <= _SYSTEM_SPEC_MAX else ""
    if system:
        texts = [b["text"] for b in system if isinstance(b.get("text"), str)]
        if sum(len(t) for t in texts) <= _SYSTEM_SPEC_MAX:
            return "\n".join(texts)[:400]
    return ""
