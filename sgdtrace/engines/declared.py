"""What a user's engine file says about itself, read without running it.

A file may declare the runs it serves::

    SGDTRACE = {"optimizer": ["adam", "adamw"], "model": "linear", "dtype": ["float32", "bfloat16"]}

Each key takes a name or a list of names (every key is optional; one left out serves all).
``sgdtrace check --engine FILE.py`` runs only the shipped configs the file serves, and a run
whose option the file does not serve is refused (exit 2) naming both. Without a declaration, a
file that defines ``update`` serves SGD (the template's optimizer) and one that defines only
``gradients`` serves every optimizer. A ``gradients(w, b, x, y)`` of four arguments serves the
article's model form (one x column); ``gradients(params, x, y)`` every model.

The file is parsed (:mod:`ast`), never imported here: the declaration must be a literal.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

#: the keys a declaration may have, and the option each one names
KEYS = {"optimizer": "--optimizer", "model": "--model", "dtype": "--dtype"}


@dataclass(frozen=True)
class Declared:
    """A file's declaration (None per key: not declared) and the parts it defines."""

    optimizer: tuple[str, ...] | None = None
    model: tuple[str, ...] | None = None
    dtype: tuple[str, ...] | None = None
    defines_update: bool = True
    gradients_arity: int | None = None  # of a top-level ``def gradients``; None when absent

    def serves(self, key: str, value: str) -> bool:
        names = getattr(self, key)
        if names is not None:
            return value in names
        if key == "optimizer" and self.defines_update:
            return value == "sgd"
        return True


class DeclarationError(ValueError):
    """The declaration is not a dict of names (the message says what is wrong)."""


def read(path: str) -> Declared:
    """The declaration of the file at ``path`` (nothing declared when it cannot be parsed: the run
    itself reports a syntax error with the file's line)."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return Declared()
    values: dict[str, tuple[str, ...]] = {}
    defines_update = False
    arity = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name == "update":
                defines_update = True
            elif node.name == "gradients":
                a = node.args
                arity = None if a.vararg else len(a.posonlyargs) + len(a.args)
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if not any(isinstance(t, ast.Name) and t.id == "SGDTRACE" for t in targets) or node.value is None:
            continue
        try:
            decl = ast.literal_eval(node.value)
        except ValueError:
            raise DeclarationError(f'{name}: SGDTRACE must be a literal dict, e.g. {{"optimizer": "adam"}}') from None
        if not isinstance(decl, dict):
            raise DeclarationError(f"{name}: SGDTRACE is a {type(decl).__name__}, not a dict of names")
        for key, value in decl.items():
            if key not in KEYS:
                raise DeclarationError(f"{name}: SGDTRACE has a key {key!r}; allowed: {', '.join(KEYS)}")
            names = (value,) if isinstance(value, str) else value
            if not isinstance(names, (list, tuple)) or not names or not all(isinstance(v, str) for v in names):
                raise DeclarationError(f"{name}: SGDTRACE[{key!r}] = {value!r}: give a name or a list of names")
            values[key] = tuple(v.lower() if key == "optimizer" else v for v in names)
    return Declared(**values, defines_update=defines_update, gradients_arity=arity)


def unserved(declared: Declared, cfg) -> str | None:
    """Why the file cannot serve ``cfg``, or None."""
    for key in KEYS:
        value = getattr(cfg, key, None) or {"optimizer": "sgd", "model": "linear", "dtype": "float32"}[key]
        if not declared.serves(key, value):
            names = getattr(declared, key)
            if names is None:
                return f"optimizer {value}: your engine's update declares no optimizer (SGDTRACE): SGD only"
            return f"{key} {value}: your engine declares SGDTRACE {key} {', '.join(names)}"
    if declared.gradients_arity == 4 and getattr(cfg, "features", None) is not None:
        return f"{cfg.features} features: your engine's gradients(w, b, x, y) is the article's form (one x column)"
    return None
