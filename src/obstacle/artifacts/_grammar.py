"""The shape-expression, symbol-name and guard grammars; nothing here evaluates anything.

``_SymExprParser`` covers rule 8 of ``obstacle.artifacts.archive`` (``sympify``),
``_is_symbol_name`` and ``_UNBACKED`` rule 9 (range-constraint keys), ``_GuardParser`` rule 10
(``guards_code``). Torch-free.
"""

from __future__ import annotations

import builtins
import re
from typing import NoReturn

from obstacle.artifacts._json import _is_identifier

_MAX_EXPR_CHARS = 4096
_MAX_EXPR_DEPTH = 32
_BUILTIN_NAMES = frozenset(dir(builtins))

_SYM_TOKEN = re.compile(
    r" *(?:(?P<int>[0-9]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[A-Za-z0-9_]*'|\"[A-Za-z0-9_]*\")|(?P<op>//|==|!=|<=|>=|[-+*%(),=<>]))"
)
_GUARD_TOKEN = re.compile(
    r" *(?:(?P<int>[0-9]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[A-Za-z0-9_]*')|(?P<op>//|==|!=|<=|>=|[-+*%()<>\[\].]))"
)
_COMPARISONS = frozenset({"==", "!=", "<=", ">=", "<", ">"})
# sympy classes and torch.utils._sympy.functions that integer shape arithmetic needs.
_SYM_FUNCTIONS = frozenset(
    {
        "Add", "Mul", "Mod", "PythonMod", "FloorDiv", "CeilDiv", "CleanDiv", "CeilToInt",
        "Max", "Min", "Equality", "Unequality", "StrictLessThan", "LessThan",
        "StrictGreaterThan", "GreaterThan", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
        "And", "Or", "Not",
    }
)  # fmt: skip
_SYM_CONSTANTS = frozenset({"oo", "int_oo", "True", "False", "true", "false"})
_ASSUMPTIONS = frozenset(
    {
        "integer", "positive", "negative", "nonnegative", "nonpositive", "real", "finite",
        "zero", "nonzero", "even", "odd", "rational", "extended_real", "commutative",
    }
)  # fmt: skip
_UNBACKED = re.compile(r"(?:u|zuf)[0-9]{1,6}\Z")
_MAX_INT_DIGITS = 19


def _is_symbol_name(name: str) -> bool:
    return (
        len(name) <= 64
        and _is_identifier(name)
        and name not in _BUILTIN_NAMES
        and name not in _SYM_FUNCTIONS
        and name not in _SYM_CONSTANTS
        and name not in {"Symbol", "Integer"}
    )


class _GrammarError(Exception):
    pass


class _Grammar:
    """A recursive-descent recogniser over a token list; subclasses define the atoms."""

    token_pattern: re.Pattern[str] = _SYM_TOKEN

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        self.i = 0

    def problem(self) -> str | None:
        """``None`` when ``text`` is in the grammar, else what is wrong and where."""
        try:
            if len(self.text) > _MAX_EXPR_CHARS:
                raise _GrammarError(f"longer than {_MAX_EXPR_CHARS} characters")
            self._tokenize()
            self.parse()
            if self.i != len(self.tokens):
                self.error("unexpected token")
        except _GrammarError as exc:
            return str(exc)
        return None

    def parse(self) -> None:
        raise NotImplementedError

    def _tokenize(self) -> None:
        at = 0
        end = len(self.text.rstrip(" "))
        while at < end:
            match = self.token_pattern.match(self.text, at)
            if match is None or match.end() == at:
                column = at + len(self.text[at:]) - len(self.text[at:].lstrip(" "))
                raise _GrammarError(f"{self.text[column]!r} at column {column} is not allowed")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            at = match.end()
        if not self.tokens:
            raise _GrammarError("empty")

    def peek(self) -> str:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else ""

    def take(self) -> tuple[str, str, int]:
        if self.i >= len(self.tokens):
            raise _GrammarError("ends too early")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        if self.peek() != text:
            self.error(f"expected {text!r}")
        self.i += 1

    def error(self, why: str) -> NoReturn:
        if self.i < len(self.tokens):
            _, text, column = self.tokens[self.i]
            raise _GrammarError(f"{why}, found {text!r} at column {column}")
        raise _GrammarError(f"{why} at the end")

    def integer(self, text: str) -> None:
        if len(text) > _MAX_INT_DIGITS:
            raise _GrammarError(f"the integer {text[:24]}… has more than {_MAX_INT_DIGITS} digits")

    def comparison(self, depth: int) -> None:
        self.arith(depth)
        while self.peek() in _COMPARISONS:
            self.i += 1
            self.arith(depth)

    def arith(self, depth: int) -> None:
        self.term(depth)
        while self.peek() in ("+", "-"):
            self.i += 1
            self.term(depth)

    def term(self, depth: int) -> None:
        self.unary(depth)
        while self.peek() in ("*", "//", "%"):
            self.i += 1
            self.unary(depth)

    def unary(self, depth: int) -> None:
        if depth > _MAX_EXPR_DEPTH:
            raise _GrammarError(f"nested deeper than {_MAX_EXPR_DEPTH}")
        if self.peek() in ("+", "-"):
            self.i += 1
            self.unary(depth + 1)
        else:
            self.atom(depth)

    def atom(self, depth: int) -> None:
        raise NotImplementedError


class _SymExprParser(_Grammar):
    """sympy ``srepr`` and infix forms of integer shape expressions.

    expr   := arith (CMP arith)*          arith := term (("+"|"-") term)*
    term   := unary (("*"|"//"|"%") unary)*   unary := ("+"|"-") unary | atom
    atom   := INT | SYMBOL | CONSTANT | "(" expr ")" | FUNC "(" expr ("," expr)* ")"
            | "Integer(" ["-"] INT ")" | "Symbol(" 'SYMBOL' ("," ASSUMPTION "=" BOOL)* ")"
    No attribute access, no other calls, no strings outside ``Symbol``, no floats, no powers.
    """

    def parse(self) -> None:
        self.comparison(0)

    def atom(self, depth: int) -> None:
        kind, text, _ = self.take()
        if kind == "int":
            self.integer(text)
        elif text == "(":
            self.comparison(depth + 1)
            self.expect(")")
        elif kind == "name" and self.peek() == "(":
            self.i += 1
            self.call(text, depth + 1)
        elif kind == "name" and (text in _SYM_CONSTANTS or _is_symbol_name(text)):
            return
        else:
            self.i -= 1
            self.error("expected a number, a shape symbol or an allowed function")

    def call(self, name: str, depth: int) -> None:
        if name == "Symbol":
            kind, text, _ = self.take()
            if kind != "str" or not _is_symbol_name(text[1:-1]):
                self.i -= 1
                self.error("Symbol() takes a quoted shape-symbol name")
            while self.peek() == ",":
                self.i += 1
                kind, text, _ = self.take()
                if kind != "name" or text not in _ASSUMPTIONS:
                    self.i -= 1
                    self.error("expected a sympy assumption such as integer=True")
                self.expect("=")
                if self.take()[1] not in ("True", "False"):
                    self.i -= 1
                    self.error("assumptions are True or False")
        elif name == "Integer":
            if self.peek() == "-":
                self.i += 1
            kind, text, _ = self.take()
            if kind != "int":
                self.i -= 1
                self.error("Integer() takes an integer literal")
            self.integer(text)
        elif name in _SYM_FUNCTIONS:
            self.comparison(depth)
            while self.peek() == ",":
                self.i += 1
                self.comparison(depth)
        else:
            self.i -= 2
            self.error(f"calling {name[:40]!r} is not allowed")
        self.expect(")")


class _GuardParser(_Grammar):
    """Shape guards as torch 2.13 writes them into ``guards_code``.

    guard  := conj ("or" conj)*        conj := neg ("and" neg)*     neg := "not" neg | comparison
    atom   := INT | "(" guard ")" | "L" "[" 'NAME' "]" ("[" ('NAME'|INT) "]"
              | ".size()[" INT "]" | ".stride()[" INT "]" | ".storage_offset()")*
    Strings are single-quoted identifiers: no quotes or backslashes can reach the generated code.
    """

    token_pattern = _GUARD_TOKEN

    def parse(self) -> None:
        self.disjunction(0)

    def disjunction(self, depth: int) -> None:
        self.conjunction(depth)
        while self.peek() == "or":
            self.i += 1
            self.conjunction(depth)

    def conjunction(self, depth: int) -> None:
        self.negation(depth)
        while self.peek() == "and":
            self.i += 1
            self.negation(depth)

    def negation(self, depth: int) -> None:
        if depth > _MAX_EXPR_DEPTH:
            raise _GrammarError(f"nested deeper than {_MAX_EXPR_DEPTH}")
        if self.peek() == "not":
            self.i += 1
            self.negation(depth + 1)
        else:
            self.comparison(depth)

    def atom(self, depth: int) -> None:
        kind, text, _ = self.take()
        if kind == "int":
            self.integer(text)
        elif text == "(":
            self.disjunction(depth + 1)
            self.expect(")")
        elif kind == "name" and text == "L":
            self.source()
        else:
            self.i -= 1
            self.error("expected an integer or an input source L['name']")

    def source(self) -> None:
        self.expect("[")
        if self.take()[0] != "str":
            self.i -= 1
            self.error("expected a quoted input name")
        self.expect("]")
        while self.peek() in ("[", "."):
            if self.take()[1] == "[":
                if self.take()[0] not in ("str", "int"):
                    self.i -= 1
                    self.error("expected a quoted key or an index")
                self.expect("]")
                continue
            kind, method, _ = self.take()
            if kind != "name" or method not in ("size", "stride", "storage_offset"):
                self.i -= 1
                self.error("only .size()[i], .stride()[i] and .storage_offset() are allowed")
            self.expect("(")
            self.expect(")")
            if method != "storage_offset":
                self.expect("[")
                kind, text, _ = self.take()
                if kind != "int":
                    self.i -= 1
                    self.error("expected a dimension index")
                self.integer(text)
                self.expect("]")
