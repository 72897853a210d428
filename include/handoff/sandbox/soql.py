"""A small, honest SOQL subset compiled to parameterised SQLite SQL.

Supported: ``SELECT f, Rel.f, Rel.Rel.f | COUNT() FROM Obj [alias] [WHERE cond]
[ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]`` with
``= != <> < <= > >= LIKE IN NOT IN``, ``AND``/``OR``/``NOT`` and parentheses, and
child-to-parent relationship paths up to five levels deep, as in Salesforce (LEFT
JOINs; a polymorphic lookup such as Task.What only as the last step). Anything else
is rejected with ``MALFORMED_QUERY`` instead of being half-understood, so code that
works here is not silently relying on a feature the sandbox fakes.

A statement longer than Salesforce's 100,000 characters is refused the same way.

Semantics follow Salesforce where they differ from SQL: text comparisons are
case-insensitive, ``!=`` and ``NOT IN`` match null values, datetimes compare in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

from handoff.sandbox.ids import normalize_id
from handoff.sandbox.store import (
    ID_TYPES,
    NUMBER_TYPES,
    TEXT_TYPES,
    FieldDef,
    SandboxStore,
    SObjectDef,
    format_datetime,
    from_storage,
    parse_datetime,
    quote_ident,
    resolve_sobject,
)

__all__ = ["MAX_SOQL_LENGTH", "CompiledQuery", "SoqlError", "compile_soql", "run_query"]

_FETCH_CHUNK = 500
# Salesforce refuses a longer SOQL statement (Salesforce Developer Limits, "SOQL statements").
MAX_SOQL_LENGTH = 100_000
# Salesforce follows at most five child-to-parent relationships in one field path.
_MAX_RELATIONSHIP_DEPTH = 5


class SoqlError(Exception):
    """A query Salesforce would reject; error_code is the API's errorCode."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


# ---------------------------------------------------------------- lexer

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<baddate>\d{4}-\d{2}-\d{2}T[\w:.+-]*)
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\w:.]))
  | (?P<number>[+-]?\d+(?:\.\d+)?(?![\w.]))
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "'": "'", '"': '"', "\\": "\\"}
_UNSUPPORTED = {
    "GROUP": "GROUP BY",
    "HAVING": "HAVING",
    "TYPEOF": "TYPEOF",
    "WITH": "WITH",
    "FOR": "FOR VIEW/UPDATE",
    "USING": "USING SCOPE",
    "INCLUDES": "INCLUDES",
    "EXCLUDES": "EXCLUDES",
}
_CLAUSE_WORDS = {"WHERE", "ORDER", "LIMIT", "OFFSET", *_UNSUPPORTED}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int
    value: Any = None
    like: str | None = None

    def is_kw(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.upper() in words


def _located(soql: str, pos: int, text: str) -> str:
    """Shape a message like Salesforce: echo the line, a caret, Row/Column, then the text."""
    line_start = soql.rfind("\n", 0, pos) + 1
    line_end = soql.find("\n", pos)
    line_end = len(soql) if line_end < 0 else line_end
    row = soql.count("\n", 0, pos) + 1
    col = pos - line_start
    line = soql[line_start:line_end]
    return f"\n{line}\n{' ' * col}^\nERROR at Row:{row}:Column:{col + 1}\n{text}"


def _decode_string(soql: str, token_text: str, pos: int) -> tuple[str, str]:
    """Decode a quoted literal into (value, LIKE pattern with backslash escapes)."""
    body = token_text[1:-1]
    value: list[str] = []
    like: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            value.append(char)
            like.append(char)
            index += 1
            continue
        escaped = body[index + 1]
        if escaped in ("%", "_"):
            value.append(escaped)
            like.append("\\" + escaped)
        elif escaped in _ESCAPES:
            decoded = _ESCAPES[escaped]
            value.append(decoded)
            like.append("\\\\" if decoded == "\\" else decoded)
        else:
            raise SoqlError(
                "MALFORMED_QUERY",
                _located(
                    soql,
                    pos + index + 1,
                    f"Invalid string literal '{token_text}'. "
                    f"Illegal character sequence '\\{escaped}' in string literal.",
                ),
            )
        index += 2
    return "".join(value), "".join(like)


def _tokenize(soql: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(soql):
        match = _TOKEN_RE.match(soql, pos)
        if match is None:
            if soql[pos] == "'":
                message = "line 1:%d no viable alternative at character ''' (unterminated string)"
                raise SoqlError("MALFORMED_QUERY", _located(soql, pos, message % pos))
            raise SoqlError(
                "MALFORMED_QUERY", _located(soql, pos, f"unexpected token: '{soql[pos]}'")
            )
        kind = match.lastgroup or ""
        text = match.group()
        if kind == "baddate":
            raise SoqlError(
                "MALFORMED_QUERY",
                _located(soql, pos, f"line 1:{pos} Invalid datetime: {text}"),
            )
        if kind == "string":
            value, like = _decode_string(soql, text, pos)
            tokens.append(_Token(kind, text, pos, value, like))
        elif kind != "ws":
            tokens.append(_Token(kind, text, pos))
        pos = match.end()
    tokens.append(_Token("eof", "<EOF>", len(soql)))
    return tokens


# ---------------------------------------------------------------- syntax tree


@dataclass(frozen=True)
class _Literal:
    kind: str  # string, number, boolean, null, date, datetime
    value: Any
    pos: int
    like: str | None = None


@dataclass(frozen=True)
class _Path:
    text: str
    pos: int


@dataclass(frozen=True)
class _Cond:
    op: str  # cmp, in, like, and, or, not
    path: _Path | None = None
    operator: str = ""
    values: tuple[_Literal, ...] = ()
    negate: bool = False
    children: tuple[_Cond, ...] = ()


@dataclass
class _Order:
    path: _Path
    descending: bool
    nulls_first: bool


@dataclass
class _Ast:
    count_only: bool
    select: list[_Path]
    sobject: _Path
    alias: str | None
    where: _Cond | None
    order: list[_Order]
    limit: int | None
    offset: int | None


class _Parser:
    """Recursive-descent parser: OR binds looser than AND, which binds looser than NOT."""

    def __init__(self, soql: str) -> None:
        self.soql = soql
        self.tokens = _tokenize(soql)
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def fail(self, token: _Token, text: str | None = None) -> SoqlError:
        if text is None:
            shown = token.text if token.kind != "eof" else "<EOF>"
            text = (
                f"unexpected token: '{shown}'" if token.kind != "eof" else "unexpected token: <EOF>"
            )
        return SoqlError("MALFORMED_QUERY", _located(self.soql, token.pos, text))

    def expect_kw(self, *words: str) -> _Token:
        token = self.advance()
        if not token.is_kw(*words):
            self.reject_unsupported(token)
            raise self.fail(token)
        return token

    def expect(self, kind: str, text: str | None = None) -> _Token:
        token = self.advance()
        if token.kind != kind or (text is not None and token.text != text):
            self.reject_unsupported(token)
            raise self.fail(token)
        return token

    def reject_unsupported(self, token: _Token) -> None:
        if token.kind == "ident" and token.text.upper() in _UNSUPPORTED:
            feature = _UNSUPPORTED[token.text.upper()]
            raise self.fail(token, f"{feature} is not supported by the sandbox SOQL subset")

    def parse(self) -> _Ast:
        self.expect_kw("SELECT")
        count_only = False
        select: list[_Path] = []
        if self.peek().is_kw("COUNT") and self.tokens[self.index + 1].text == "(":
            self.advance()
            self.expect("punct", "(")
            self.expect("punct", ")")
            count_only = True
        else:
            select.append(self.path())
            while self.peek().text == ",":
                self.advance()
                select.append(self.path())
        self.expect_kw("FROM")
        sobject_token = self.expect("ident")
        alias = None
        if self.peek().kind == "ident" and self.peek().text.upper() not in _CLAUSE_WORDS:
            alias = self.advance().text
        where = None
        if self.peek().is_kw("WHERE"):
            self.advance()
            where = self.or_expr()
        order: list[_Order] = []
        if self.peek().is_kw("ORDER"):
            self.advance()
            self.expect_kw("BY")
            order.append(self.order_item())
            while self.peek().text == ",":
                self.advance()
                order.append(self.order_item())
        limit = offset = None
        if self.peek().is_kw("LIMIT"):
            self.advance()
            limit = self.non_negative_int()
        if self.peek().is_kw("OFFSET"):
            self.advance()
            offset = self.non_negative_int()
        end = self.peek()
        if end.kind != "eof":
            self.reject_unsupported(end)
            raise self.fail(end)
        sobject = _Path(sobject_token.text, sobject_token.pos)
        return _Ast(count_only, select, sobject, alias, where, order, limit, offset)

    def path(self) -> _Path:
        token = self.advance()
        if token.kind != "ident" or token.text.upper() in {"FROM", "WHERE", "SELECT"}:
            self.reject_unsupported(token)
            raise self.fail(token)
        if self.peek().text == "(":
            raise self.fail(token, f"function {token.text}() is not supported by the sandbox")
        return _Path(token.text, token.pos)

    def non_negative_int(self) -> int:
        token = self.advance()
        if token.kind != "number" or not token.text.isdigit():
            raise self.fail(token)
        return int(token.text)

    def order_item(self) -> _Order:
        path = self.path()
        descending = False
        if self.peek().is_kw("ASC", "DESC"):
            descending = self.advance().text.upper() == "DESC"
        nulls_first = not descending
        if self.peek().is_kw("NULLS"):
            self.advance()
            nulls_first = self.expect_kw("FIRST", "LAST").text.upper() == "FIRST"
        return _Order(path, descending, nulls_first)

    def or_expr(self) -> _Cond:
        children = [self.and_expr()]
        while self.peek().is_kw("OR"):
            self.advance()
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else _Cond("or", children=tuple(children))

    def and_expr(self) -> _Cond:
        children = [self.not_expr()]
        while self.peek().is_kw("AND"):
            self.advance()
            children.append(self.not_expr())
        return children[0] if len(children) == 1 else _Cond("and", children=tuple(children))

    def not_expr(self) -> _Cond:
        if self.peek().is_kw("NOT"):
            self.advance()
            return _Cond("not", children=(self.not_expr(),))
        if self.peek().text == "(":
            self.advance()
            inner = self.or_expr()
            self.expect("punct", ")")
            return inner
        return self.condition()

    def condition(self) -> _Cond:
        path = self.path()
        token = self.advance()
        if token.kind == "op":
            operator = "!=" if token.text == "<>" else token.text
            return _Cond("cmp", path, operator, (self.literal(),))
        if token.is_kw("LIKE"):
            return _Cond("like", path, "LIKE", (self.literal(),))
        negate = False
        if token.is_kw("NOT"):
            negate = True
            token = self.advance()
        if token.is_kw("IN"):
            self.expect("punct", "(")
            if self.peek().is_kw("SELECT"):
                raise self.fail(
                    self.peek(), "semi-join sub-selects are not supported by the sandbox"
                )
            values = [self.literal()]
            while self.peek().text == ",":
                self.advance()
                values.append(self.literal())
            self.expect("punct", ")")
            return _Cond("in", path, "IN", tuple(values), negate=negate)
        self.reject_unsupported(token)
        raise self.fail(token)

    def literal(self) -> _Literal:
        token = self.advance()
        if token.kind == "string":
            return _Literal("string", token.value, token.pos, token.like)
        if token.kind == "number":
            number = float(token.text) if "." in token.text else int(token.text)
            return _Literal("number", number, token.pos)
        if token.kind == "date":
            try:
                return _Literal("date", date.fromisoformat(token.text).isoformat(), token.pos)
            except ValueError:
                raise self.fail(token, f"line 1:{token.pos} Invalid date: {token.text}") from None
        if token.kind == "datetime":
            try:
                stamp = format_datetime(parse_datetime(token.text))
            except ValueError:
                raise self.fail(
                    token, f"line 1:{token.pos} Invalid datetime: {token.text}"
                ) from None
            return _Literal("datetime", stamp, token.pos)
        if token.is_kw("TRUE", "FALSE"):
            return _Literal("boolean", token.text.upper() == "TRUE", token.pos)
        if token.is_kw("NULL"):
            return _Literal("null", None, token.pos)
        if token.kind == "ident":
            raise self.fail(
                token,
                f"date literal or bind variable '{token.text}' is not supported by the sandbox",
            )
        raise self.fail(token)


# ---------------------------------------------------------------- compiler


@dataclass
class _Join:
    name: str  # canonical relationship name, e.g. Owner
    fk: FieldDef
    parent: _Join | None  # the join whose row holds fk; None for the queried object
    targets: list[tuple[SObjectDef, str]]  # (sObject, SQL alias)
    id_index: int = -1
    type_index: int = -1

    @cached_property
    def chain(self) -> tuple[_Join, ...]:
        """This join and its parents, from the queried object outwards."""
        return (*(self.parent.chain if self.parent else ()), self)

    @property
    def on_sql(self) -> str:
        parent_alias = "t0" if self.parent is None else self.parent.targets[0][1]
        return f"{parent_alias}.{quote_ident(self.fk.name)}"

    @property
    def id_expr(self) -> str:
        if len(self.targets) == 1:
            return f'{self.targets[0][1]}."Id"'
        return "COALESCE(" + ", ".join(f'{alias}."Id"' for _, alias in self.targets) + ")"

    @property
    def type_expr(self) -> str:
        cases = " ".join(
            f"WHEN {alias}.\"Id\" IS NOT NULL THEN '{sdef.name}'" for sdef, alias in self.targets
        )
        return f"CASE {cases} END"

    def column_expr(self, fdef_name: str) -> str:
        if len(self.targets) == 1:
            return f"{self.targets[0][1]}.{quote_ident(fdef_name)}"
        cases = " ".join(
            f'WHEN {alias}."Id" IS NOT NULL THEN {alias}.{quote_ident(fdef_name)}'
            for _, alias in self.targets
        )
        return f"CASE {cases} END"


@dataclass(frozen=True)
class _Column:
    expr: str
    fdef: FieldDef
    join: _Join | None
    key: str  # canonical path, for duplicate detection


@dataclass(frozen=True)
class _OutItem:
    fdef: FieldDef
    index: int
    join: _Join | None


@dataclass
class CompiledQuery:
    """A parsed, validated query ready to run against a SandboxStore."""

    soql: str
    sobject: str
    count_only: bool
    from_sql: str
    where_sql: str
    params: list[Any]
    order_sql: str
    limit: int | None
    offset: int | None
    select_exprs: list[str] = field(default_factory=list)
    layout: list[_OutItem] = field(default_factory=list)

    def _tail(self) -> tuple[str, list[Any]]:
        params: list[Any] = []
        tail = ""
        if self.limit is not None or self.offset is not None:
            tail = " LIMIT ? OFFSET ?"
            params = [-1 if self.limit is None else self.limit, self.offset or 0]
        return tail, params

    def _ids_sql(self) -> tuple[str, list[Any]]:
        tail, tail_params = self._tail()
        statement = (
            f'SELECT t0."Id" FROM {self.from_sql} WHERE {self.where_sql} '
            f"ORDER BY {self.order_sql}{tail}"
        )
        return statement, [*self.params, *tail_params]

    def ids(self, store: SandboxStore) -> list[str]:
        """Run the filter/sort/limit part and return matching Ids in result order."""
        statement, params = self._ids_sql()
        return [row[0] for row in store.sql(statement, params)]

    def query_plan(self, store: SandboxStore) -> list[str]:
        """How SQLite runs the filter/sort part, to check that lookups use an index."""
        statement, params = self._ids_sql()
        return [row[-1] for row in store.sql(f"EXPLAIN QUERY PLAN {statement}", params)]

    def count(self, store: SandboxStore) -> int:
        """Number of rows the query matches (what COUNT() returns), LIMIT/OFFSET applied."""
        rows = store.sql(
            f"SELECT COUNT(*) FROM {self.from_sql} WHERE {self.where_sql}", self.params
        )
        total = max(0, int(rows[0][0]) - (self.offset or 0))
        return total if self.limit is None else min(total, self.limit)

    def records(
        self, store: SandboxStore, ids: Sequence[str], *, api_version: str = "59.0"
    ) -> list[dict[str, Any]]:
        """Build Salesforce-shaped records for the given Ids, in the given order."""
        by_id: dict[str, tuple[Any, ...]] = {}
        exprs = ", ".join(self.select_exprs)
        for start in range(0, len(ids), _FETCH_CHUNK):
            chunk = list(ids[start : start + _FETCH_CHUNK])
            marks = ", ".join("?" for _ in chunk)
            rows = store.sql(
                f'SELECT {exprs} FROM {self.from_sql} WHERE t0."Id" IN ({marks})', chunk
            )
            by_id.update((row[0], row) for row in rows)
        return [self._record(by_id[i], api_version) for i in ids if i in by_id]

    def _record(self, row: tuple[Any, ...], api_version: str) -> dict[str, Any]:
        record: dict[str, Any] = {"attributes": _attributes(self.sobject, row[0], api_version)}
        for item in self.layout:
            value = from_storage(item.fdef, row[item.index])
            holder: dict[str, Any] | None = record
            for join in item.join.chain if item.join else ():
                assert holder is not None
                if join.name not in holder:
                    related_id = row[join.id_index]
                    holder[join.name] = (
                        None
                        if related_id is None
                        else {
                            "attributes": _attributes(row[join.type_index], related_id, api_version)
                        }
                    )
                holder = holder[join.name]
                if holder is None:  # a missing parent is null, with nothing below it
                    break
            if holder is not None:
                holder[item.fdef.name] = value
        return record


def _attributes(sobject: str, record_id: str, api_version: str) -> dict[str, str]:
    return {"type": sobject, "url": f"/services/data/v{api_version}/sobjects/{sobject}/{record_id}"}


_NO_COLUMN = (
    "No such column '{name}' on entity '{entity}'. If you are attempting to use a custom field, "
    "be sure to append the '__c' after the custom field name. Please reference your WSDL or the "
    "describe call for the appropriate names."
)
_NO_RELATIONSHIP = (
    "Didn't understand relationship '{name}' in field path. If you are attempting to use a "
    "custom relationship, be sure to append the '__r' after the custom relationship name. "
    "Please reference your WSDL or the describe call for the appropriate names."
)
_NO_TYPE = (
    "sObject type '{name}' is not supported. If you are attempting to use a custom object, be "
    "sure to append the '__c' after the entity name. Please reference your WSDL or the describe "
    "call for the appropriate names."
)
_TYPE_NAMES = {
    "string": ("string", True),
    "textarea": ("string", True),
    "picklist": ("string", True),
    "id": ("id", True),
    "reference": ("id", True),
    "boolean": ("boolean", False),
    "double": ("double", False),
    "currency": ("currency", False),
    "date": ("date", False),
    "datetime": ("dateTime", False),
}
_LITERAL_FOR_TYPE = {
    "string": "string", "textarea": "string", "picklist": "string", "id": "string",
    "reference": "string", "boolean": "boolean", "double": "number", "currency": "number",
    "date": "date", "datetime": "datetime",
}  # fmt: skip


# Polymorphic lookups (Task.What) expose the related record's sObject name as "Type".
_TYPE_FIELD = FieldDef(name="Type", type="picklist", label="Type", length=255)


class _Compiler:
    def __init__(self, soql: str, ast: _Ast) -> None:
        self.soql = soql
        self.ast = ast
        sdef = resolve_sobject(ast.sobject.text)
        if sdef is None:
            raise SoqlError(
                "INVALID_TYPE",
                _located(soql, ast.sobject.pos, _NO_TYPE.format(name=ast.sobject.text)),
            )
        self.sdef = sdef
        self.joins: dict[str, _Join] = {}
        self.params: list[Any] = []

    def error(self, code: str, pos: int, text: str) -> SoqlError:
        return SoqlError(code, _located(self.soql, pos, text))

    def join_for(self, fk: FieldDef, parent: _Join | None) -> _Join:
        """The LEFT JOIN that follows fk from parent's row (or the queried object's)."""
        assert fk.relationship_name is not None
        names = [join.name for join in parent.chain] if parent else []
        key = ".".join([*names, fk.relationship_name]).lower()
        if key not in self.joins:
            number = len(self.joins) + 1
            targets = []
            for position, target in enumerate(fk.reference_to):
                target_def = resolve_sobject(target)
                assert target_def is not None
                targets.append((target_def, f"r{number}_{position}"))
            self.joins[key] = _Join(fk.relationship_name, fk, parent, targets)
        return self.joins[key]

    def follow(self, path: _Path, relationships: list[str]) -> _Join:
        """Join along relationship names from the queried object, e.g. Account, Owner."""
        if len(relationships) > _MAX_RELATIONSHIP_DEPTH:
            raise self.error(
                "MALFORMED_QUERY",
                path.pos,
                f"'{path.text}': a field path follows at most {_MAX_RELATIONSHIP_DEPTH} "
                "relationships",
            )
        join: _Join | None = None
        for name in relationships:
            if join is not None and len(join.targets) > 1:
                raise self.error(
                    "MALFORMED_QUERY",
                    path.pos,
                    f"'{path.text}': the sandbox does not follow relationships beyond the "
                    f"polymorphic '{join.name}'",
                )
            sobject = self.sdef if join is None else join.targets[0][0]
            fk = sobject.by_relationship.get(name.lower())
            if fk is None:
                raise self.error("INVALID_FIELD", path.pos, _NO_RELATIONSHIP.format(name=name))
            join = self.join_for(fk, join)
        assert join is not None
        return join

    def resolve(self, path: _Path) -> _Column:
        parts = path.text.split(".")
        prefixes = {self.sdef.name.lower()} | (
            {self.ast.alias.lower()} if self.ast.alias else set()
        )
        if len(parts) > 1 and parts[0].lower() in prefixes:
            parts = parts[1:]
        if len(parts) == 1:
            fdef = self.sdef.field(parts[0])
            if fdef is None:
                raise self.error(
                    "INVALID_FIELD",
                    path.pos,
                    _NO_COLUMN.format(name=parts[0], entity=self.sdef.name),
                )
            return _Column(f"t0.{quote_ident(fdef.name)}", fdef, None, fdef.name.lower())
        join = self.follow(path, parts[:-1])
        field_name = parts[-1]
        join_key = ".".join(j.name for j in join.chain).lower()
        if len(join.targets) > 1 and field_name.lower() == "type":
            return _Column(join.type_expr, _TYPE_FIELD, join, f"{join_key}.type")
        target_fields = [target.field(field_name) for target, _ in join.targets]
        if any(f is None for f in target_fields):
            fk = join.fk
            entity = fk.reference_to[0] if len(fk.reference_to) == 1 else fk.relationship_name
            raise self.error(
                "INVALID_FIELD", path.pos, _NO_COLUMN.format(name=field_name, entity=entity)
            )
        fdef = target_fields[0]
        assert fdef is not None
        key = f"{join_key}.{fdef.name.lower()}"
        return _Column(join.column_expr(fdef.name), fdef, join, key)

    def compile(self, include_deleted: bool) -> CompiledQuery:
        ast = self.ast
        select_exprs = ['t0."Id"']
        layout: list[_OutItem] = []
        seen: set[str] = set()
        for path in ast.select:
            column = self.resolve(path)
            if column.key in seen:
                raise self.error(
                    "MALFORMED_QUERY", path.pos, f"duplicate field selected: {path.text}"
                )
            seen.add(column.key)
            select_exprs.append(column.expr)
            layout.append(_OutItem(column.fdef, len(select_exprs) - 1, column.join))
        # Every join on the way to a selected field gives its record's Id and type, so
        # Account.Owner.Name yields "Account": {"attributes": ..., "Owner": {...}}.
        selected_joins = {
            id(join): join for item in layout if item.join is not None for join in item.join.chain
        }
        for join in selected_joins.values():
            select_exprs.append(join.id_expr)
            join.id_index = len(select_exprs) - 1
            select_exprs.append(join.type_expr)
            join.type_index = len(select_exprs) - 1

        conditions = [] if include_deleted else ['t0."IsDeleted" = 0']
        if ast.where is not None:
            conditions.append(self.condition(ast.where))
        order_terms = [self.order_term(item) for item in ast.order]
        if not any(self.resolve(item.path).key == "id" for item in ast.order):
            # Ties keep one stable order. Not when Id is already sorted on: a repeated
            # term stops SQLite from reading an index such as (SystemModstamp, Id) in order.
            order_terms.append('t0."Id" ASC')

        from_sql = f"{quote_ident(self.sdef.name)} AS t0"
        for join in self.joins.values():
            for target, alias in join.targets:
                from_sql += (
                    f" LEFT JOIN {quote_ident(target.name)} AS {alias}"
                    f' ON {alias}."Id" = {join.on_sql}'
                )
        return CompiledQuery(
            soql=self.soql,
            sobject=self.sdef.name,
            count_only=ast.count_only,
            from_sql=from_sql,
            where_sql=" AND ".join(f"({c})" for c in conditions) or "1",
            params=self.params,
            order_sql=", ".join(order_terms),
            limit=ast.limit,
            offset=ast.offset,
            select_exprs=select_exprs,
            layout=layout,
        )

    def order_term(self, item: _Order) -> str:
        column = self.resolve(item.path)
        if not column.fdef.filterable:
            raise self.error(
                "INVALID_FIELD",
                item.path.pos,
                f"field '{column.fdef.name}' can not be sorted in a query call",
            )
        collate = " COLLATE NOCASE" if column.fdef.type in TEXT_TYPES else ""
        direction = "DESC" if item.descending else "ASC"
        nulls = "FIRST" if item.nulls_first else "LAST"
        return f"{column.expr}{collate} {direction} NULLS {nulls}"

    def condition(self, cond: _Cond) -> str:
        """SQL that is 0 or 1, never null, so NOT keeps SOQL's meaning for null values.

        A comparison is written ``(x op ? AND x IS NOT NULL)`` rather than
        ``IFNULL(x op ?, 0)``: same truth table, but SQLite can use an index on x.
        """
        if cond.op in ("and", "or"):
            joiner = f" {cond.op.upper()} "
            return joiner.join(f"({self.condition(child)})" for child in cond.children)
        if cond.op == "not":
            return f"NOT ({self.condition(cond.children[0])})"
        assert cond.path is not None
        column = self.resolve(cond.path)
        fdef = column.fdef
        if not fdef.filterable:
            raise self.error(
                "INVALID_FIELD",
                cond.path.pos,
                f"field '{fdef.name}' can not be filtered in a query call",
            )
        expr = column.expr
        if fdef.type in TEXT_TYPES:
            expr = f"{expr} COLLATE NOCASE"
        if cond.op == "like":
            if fdef.type not in TEXT_TYPES:
                raise self.error(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    cond.path.pos,
                    f"invalid operator on field '{fdef.name}': LIKE needs a text field",
                )
            literal = cond.values[0]
            if literal.kind != "string":
                raise self.type_error(fdef, literal)
            self.params.append(literal.like)
            return f"({expr} LIKE ? ESCAPE '\\' AND {column.expr} IS NOT NULL)"
        if cond.op == "in":
            values = [
                self.param(fdef, literal) for literal in cond.values if literal.kind != "null"
            ]
            has_null = any(literal.kind == "null" for literal in cond.values)
            parts = []
            if values:
                self.params.extend(values)
                marks = ", ".join("?" for _ in values)
                parts.append(f"({expr} IN ({marks}) AND {column.expr} IS NOT NULL)")
            if has_null:
                parts.append(f"{column.expr} IS NULL")
            matched = " OR ".join(parts)
            return f"NOT ({matched})" if cond.negate else matched
        literal = cond.values[0]
        operator = cond.operator
        if literal.kind == "null":
            if operator == "=":
                return f"{column.expr} IS NULL"
            if operator == "!=":
                return f"{column.expr} IS NOT NULL"
            raise self.error(
                "INVALID_QUERY_FILTER_OPERATOR",
                literal.pos,
                f"invalid operator on null: {fdef.name} {operator} null",
            )
        if operator not in ("=", "!=") and fdef.type == "boolean":
            raise self.error(
                "INVALID_QUERY_FILTER_OPERATOR",
                cond.path.pos,
                f"invalid operator on boolean field: {fdef.name} {operator}",
            )
        self.params.append(self.param(fdef, literal))
        if operator == "!=":
            return f"({column.expr} IS NULL OR {expr} != ?)"
        return f"({expr} {operator} ? AND {column.expr} IS NOT NULL)"

    def type_error(self, fdef: FieldDef, literal: _Literal) -> SoqlError:
        type_name, quoted = _TYPE_NAMES[fdef.type]
        quoting = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
        return self.error(
            "INVALID_FIELD",
            literal.pos,
            f"value of filter criterion for field '{fdef.name}' must be of type {type_name} "
            f"and {quoting}",
        )

    def param(self, fdef: FieldDef, literal: _Literal) -> Any:
        if literal.kind != _LITERAL_FOR_TYPE[fdef.type]:
            raise self.type_error(fdef, literal)
        if fdef.type in ID_TYPES:
            normalized = normalize_id(literal.value)
            if normalized is None:
                raise self.error(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    literal.pos,
                    f"invalid ID field: {literal.value}",
                )
            return normalized
        if fdef.type == "boolean":
            return int(literal.value)
        if fdef.type in NUMBER_TYPES:
            return float(literal.value)
        return literal.value


def compile_soql(soql: str, *, include_deleted: bool = False) -> CompiledQuery:
    """Parse and validate a SOQL query against the sandbox schema (raises SoqlError)."""
    if not soql or not soql.strip():
        raise SoqlError("MALFORMED_QUERY", "SOQL statement cannot be empty")
    if len(soql) > MAX_SOQL_LENGTH:
        raise SoqlError(
            "MALFORMED_QUERY",
            f"SOQL statements cannot be longer than {MAX_SOQL_LENGTH:,} characters.",
        )
    ast = _Parser(soql).parse()
    return _Compiler(soql, ast).compile(include_deleted)


def run_query(
    store: SandboxStore, soql: str, *, include_deleted: bool = False, api_version: str = "59.0"
) -> dict[str, Any]:
    """Run a query without paging and return the Salesforce-shaped result (for tools/tests)."""
    compiled = compile_soql(soql, include_deleted=include_deleted)
    if compiled.count_only:
        return {"totalSize": compiled.count(store), "done": True, "records": []}
    ids = compiled.ids(store)
    records = compiled.records(store, ids, api_version=api_version)
    return {"totalSize": len(records), "done": True, "records": records}
