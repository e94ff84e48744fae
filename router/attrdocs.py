"""Attribute docstrings (the string under a field), which Python does not keep at runtime."""

from __future__ import annotations

import ast
import inspect
import itertools
from functools import cache


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Return the docstring under each annotated field of ``cls``, whitespace folded.

    Read from the class's source; empty when the source is not available (a zipped install).
    """
    try:
        tree = ast.parse(inspect.getsource(cls))
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
