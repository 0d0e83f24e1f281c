"""The schema walk over ``models/model.json`` against torch 2.13's export schema.

Nodes and their operator targets against ``allowed_ops``, arguments, metadata, signatures and
treespecs: rules 3 and 8-16 of ``obstacle.artifacts.archive`` (the grammars themselves live in
``_grammar``, the typed JSON access in ``_json``). Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from obstacle.artifacts._grammar import (
    _MAX_EXPR_CHARS,
    _UNBACKED,
    _GuardParser,
    _is_symbol_name,
    _SymExprParser,
)
from obstacle.artifacts._json import (
    _DTYPE_SIZES,
    _MAX_JSON_DEPTH,
    _MAX_TEXT_CHARS,
    _MEMORY_FORMATS,
    _STRIDED,
    _TENSOR_META_KEYS,
    _is_fqn,
    _is_identifier,
    _JsonChecker,
)
from obstacle.artifacts._zip import _RECAPTURE, _ZipContainer
from obstacle.artifacts.allowed_ops import why_refused

_MAX_GUARDS = 1000
_SCHEMA_MAJOR = 8


_ARGUMENT_KINDS = frozenset(
    {
        "as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats",
        "as_string", "as_strings", "as_bool", "as_bools", "as_sym_int", "as_sym_ints",
        "as_sym_float", "as_sym_floats", "as_sym_bool", "as_sym_bools", "as_scalar_type",
        "as_memory_format", "as_layout", "as_device", "as_optional_tensors",
        "as_optional_tensor", "as_complex",
    }
)  # fmt: skip
# Not allowed: as_graph (subgraphs of higher-order ops), as_custom_obj, as_operator (a callable
# resolved like a node target), as_string_to_argument, as_int_lists, as_float_lists and
# as_nested_tensors (triton and HOP plumbing).
_GRAPH_INPUT_KINDS = frozenset(
    {"as_tensor", "as_sym_int", "as_int", "as_float", "as_bool", "as_none", "as_string"}
)
_INPUT_SPECS = frozenset({"user_input", "parameter", "buffer", "tensor_constant", "constant_input"})
_OUTPUT_SPECS = frozenset(
    {
        "user_output", "loss_output", "buffer_mutation", "parameter_mutation",
        "gradient_to_parameter", "gradient_to_user_input", "user_input_mutation",
    }
)  # fmt: skip
_METADATA_KEYS = frozenset(
    {"stack_trace", "nn_module_stack", "torch_fn", "from_node", "custom", "source_fn_stack"}
)
# A module called more than once (a cell in a Python loop, a shared layer) gets "@<call index>"
# on its key; torch's unflatten only splits it off and int()s the index.
_MODULE_KEY = re.compile(r"[A-Za-z0-9_.]{1,1024}(?:@[0-9]{1,6})?\Z")
_SOURCE_FN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*,[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*\Z")
_TREESPEC_TYPES = frozenset(
    {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}
)
_OUTPUT_NAME_KEYS: dict[str, str | None] = {
    "loss_output": None,
    "buffer_mutation": "buffer_name",
    "parameter_mutation": "parameter_name",
    "gradient_to_parameter": "parameter_name",
    "gradient_to_user_input": "user_input_name",
    "user_input_mutation": "user_input_name",
}
_HINT_KINDS = frozenset({"as_int", "as_bool", "as_float"})
_CONSTANT_KINDS = frozenset({"as_none", "as_int", "as_float", "as_string", "as_bool"})


class _ProgramChecker(_JsonChecker):
    """Walks ``models/model.json`` against torch 2.13's schema (torch/_export/serde/schema.py)."""

    def __init__(self, archive: _ZipContainer, entry: str) -> None:
        super().__init__(archive, entry)
        self.operators: set[str] = set()
        self.node_count = 0
        self._tensor_refs: list[str] = []  # tensor names seen since the last _take_refs

    def check(self, raw: bytes, *, payload_names: set[str]) -> None:
        program = self.record(
            self.load(raw),
            "",
            {"graph_module", "opset_version", "range_constraints", "schema_version"},
            frozenset({"verifiers", "torch_version", "guards_code"}),
        )
        self._schema_version(program["schema_version"])
        self._opset(program["opset_version"])
        for symbol, bounds in self.mapping(
            program["range_constraints"], "range_constraints"
        ).items():
            self._range_constraint(symbol, bounds)
        verifiers = self.sequence(program.get("verifiers", []), "verifiers")
        for i, verifier in enumerate(verifiers):
            if verifier not in ("ATEN", ""):
                self.fail(f"verifiers[{i}]", f"is {verifier!r}; a decomposed probe uses 'ATEN'")
        self.string(program.get("torch_version", ""), "torch_version", max_chars=64)
        guards = self.sequence(program.get("guards_code", []), "guards_code")
        if len(guards) > _MAX_GUARDS:
            self.fail("guards_code", f"holds {len(guards)} guards, over {_MAX_GUARDS}")
        for i, guard in enumerate(guards):
            self._guard(guard, f"guards_code[{i}]")
        self._graph_module(program["graph_module"], payload_names)

    def _schema_version(self, value: Any) -> None:
        fields = self.record(value, "schema_version", {"major", "minor"})
        major = self.integer(fields["major"], "schema_version.major")
        self.integer(fields["minor"], "schema_version.minor", low=0)
        if major != _SCHEMA_MAJOR:
            self.fail(
                "schema_version.major",
                f"is {major}; this validator knows torch.export schema {_SCHEMA_MAJOR}.x (torch 2.13)",
                f"{_RECAPTURE} with the torch version the service supports",
            )

    def _opset(self, value: Any) -> None:
        for namespace, version in self.mapping(value, "opset_version").items():
            if namespace != "aten":
                self.fail(
                    "opset_version",
                    f"names the operator namespace {namespace[:80]!r}; a probe uses only 'aten'",
                )
            self.integer(version, "opset_version.aten", low=0, high=1 << 20)

    def _range_constraint(self, symbol: str, bounds: Any) -> None:
        where = f"range_constraints[{symbol[:80]!r}]"
        if not _is_symbol_name(symbol) or (
            symbol.startswith(("u", "zuf")) and not _UNBACKED.match(symbol)
        ):
            self.fail(
                where,
                "is keyed by a name that is not a shape symbol (like 's0'; unbacked 'u<n>'/"
                "'zuf<n>' take at most six digits, torch loops over them)",
            )
        fields = self.record(bounds, where, {"min_val", "max_val"})
        for key in ("min_val", "max_val"):
            if fields[key] is not None:
                self.integer(fields[key], f"{where}.{key}")

    def _guard(self, value: Any, where: str) -> None:
        guard = self.string(value, where, max_chars=_MAX_EXPR_CHARS)
        problem = _GuardParser(guard).problem()
        if problem:
            self.fail(
                where,
                f"is the guard {guard[:120]!r}, which torch would paste into Python source and "
                f"exec; it is outside the shape-guard grammar ({problem})",
                f"{_RECAPTURE}; torch writes guards like \"L['x'].size()[0] == L['y'].size()[0]\"",
            )

    def _graph_module(self, value: Any, payload_names: set[str]) -> None:
        fields = self.record(
            value,
            "graph_module",
            {"graph", "signature", "module_call_graph"},
            frozenset({"metadata", "treespec_namedtuple_fields"}),
        )
        self._graph(fields["graph"], "graph_module.graph")
        self._signature(fields["signature"], payload_names)
        calls = self.sequence(fields["module_call_graph"], "graph_module.module_call_graph")
        for i, call in enumerate(calls):
            self._module_call(call, f"graph_module.module_call_graph[{i}]")
        metadata = self.mapping(fields.get("metadata", {}), "graph_module.metadata")
        for key, text in metadata.items():
            if key != "custom":
                self.fail(
                    "graph_module.metadata", f"has the key {key[:80]!r}; only 'custom' is known"
                )
            custom = self.string(text, "graph_module.metadata.custom", max_chars=_MAX_TEXT_CHARS)
            self.embedded_json(custom, "graph_module.metadata.custom")
        namedtuples = "graph_module.treespec_namedtuple_fields"
        if self.mapping(fields.get("treespec_namedtuple_fields", {}), namedtuples):
            self.fail(
                "graph_module.treespec_namedtuple_fields",
                "declares namedtuple types; probe inputs and outputs are plain tuples of tensors",
            )

    # -- the graph --

    def _graph(self, value: Any, where: str) -> None:
        fields = self.record(
            value,
            where,
            {"inputs", "outputs", "nodes", "tensor_values", "sym_int_values", "sym_bool_values"},
            frozenset({"is_single_tensor_return", "custom_obj_values", "sym_float_values"}),
        )
        if self.mapping(fields.get("custom_obj_values", {}), f"{where}.custom_obj_values"):
            self.fail(
                f"{where}.custom_obj_values",
                "declares custom (script/torchbind) objects; a probe holds plain tensors only",
            )
        self.boolean(
            fields.get("is_single_tensor_return", False), f"{where}.is_single_tensor_return"
        )
        for name, meta in self.mapping(fields["tensor_values"], f"{where}.tensor_values").items():
            here = f"{where}.tensor_values[{name[:80]!r}]"
            self.identifier(name, here)
            self._tensor_meta(meta, here)
        for key, unions in (
            ("sym_int_values", frozenset({"as_expr", "as_int"})),
            ("sym_float_values", frozenset({"as_expr", "as_float"})),
            ("sym_bool_values", frozenset({"as_expr", "as_bool"})),
        ):
            for name, sym in self.mapping(fields.get(key, {}), f"{where}.{key}").items():
                here = f"{where}.{key}[{name[:80]!r}]"
                self.identifier(name, here)
                self._sym(sym, here, unions)
        described = set(fields["tensor_values"])
        self._take_refs()
        for i, item in enumerate(self.sequence(fields["inputs"], f"{where}.inputs")):
            self._argument(item, f"{where}.inputs[{i}]", _GRAPH_INPUT_KINDS)
        defined = self._define(f"{where}.inputs", set(), described)
        for i, node in enumerate(self.sequence(fields["nodes"], f"{where}.nodes")):
            here = f"{where}.nodes[{i}]"
            self._node(node, here, defined, described)
        for i, item in enumerate(self.sequence(fields["outputs"], f"{where}.outputs")):
            self._argument(item, f"{where}.outputs[{i}]", _ARGUMENT_KINDS)
        self._use(f"{where}.outputs", defined)

    # Data flow: torch's deserializer looks every tensor name up in tensor_values and the FX
    # graph it builds fails on a value used before (or without) its definition. Such a program
    # passes the schema but would be refused by the worker's torch.export.load.

    def _take_refs(self) -> list[str]:
        refs, self._tensor_refs = self._tensor_refs, []
        return refs

    def _define(self, where: str, defined: set[str], described: set[str]) -> set[str]:
        for name in self._take_refs():
            if name not in described:
                self.fail(where, f"defines the tensor {name[:80]!r}, which tensor_values lacks")
            if name in defined:
                self.fail(where, f"defines the tensor {name[:80]!r} a second time")
            defined.add(name)
        return defined

    def _use(self, where: str, defined: set[str]) -> None:
        for name in self._take_refs():
            if name not in defined:
                self.fail(
                    where,
                    f"uses the tensor {name[:80]!r}, which no graph input or earlier node defines",
                )

    def _node(self, value: Any, where: str, defined: set[str], described: set[str]) -> None:
        fields = self.record(
            value,
            where,
            {"target", "inputs", "outputs", "metadata"},
            frozenset({"is_hop_single_tensor_return", "name"}),
        )
        target = self.string(fields["target"], f"{where}.target")
        refusal = why_refused(target)
        if refusal is not None:
            self.fail(f"{where}.target", refusal, _OPERATOR_FIX)
        self.operators.add(target)
        self.node_count += 1
        if fields.get("name") is not None:
            self.identifier(fields["name"], f"{where}.name")
        if fields.get("is_hop_single_tensor_return") is not None:
            self.boolean(
                fields["is_hop_single_tensor_return"], f"{where}.is_hop_single_tensor_return"
            )
        for i, item in enumerate(self.sequence(fields["inputs"], f"{where}.inputs")):
            here = f"{where}.inputs[{i}]"
            named = self.record(item, here, {"name", "arg"}, frozenset({"kind"}))
            self.identifier(named["name"], f"{here}.name")
            if named.get("kind") is not None:
                self.choice(named["kind"], f"{here}.kind", {1, 2}, "argument kind")
            self._argument(named["arg"], f"{here}.arg", _ARGUMENT_KINDS)
        self._use(f"{where}.inputs", defined)
        for i, item in enumerate(self.sequence(fields["outputs"], f"{where}.outputs")):
            self._argument(item, f"{where}.outputs[{i}]", _ARGUMENT_KINDS)
        self._define(f"{where}.outputs", defined, described)
        self._metadata(self.mapping(fields["metadata"], f"{where}.metadata"), f"{where}.metadata")

    def _metadata(self, metadata: dict[str, Any], where: str) -> None:
        for key, value in metadata.items():
            here = f"{where}.{key}"
            if key not in _METADATA_KEYS:
                self.fail(
                    where, f"has the key {key[:80]!r}; known keys are {sorted(_METADATA_KEYS)}"
                )
            text = self.text(value, here)
            if key in ("from_node", "custom"):
                self.embedded_json(text, here)
            elif key == "nn_module_stack":
                for item in text.split(";"):
                    parts = item.split(",")
                    if (
                        len(parts) != 3
                        or not _MODULE_KEY.match(parts[0])
                        or (parts[1] and not _is_fqn(parts[1]))
                    ):
                        self.fail(
                            here,
                            f"holds {item[:80]!r}, not 'key,module.path,type' with a dotted "
                            "module path (torch.export.unflatten pastes these paths into code)",
                        )
            elif key == "source_fn_stack":
                for item in text.split(";"):
                    if not _SOURCE_FN.match(item) or "__" in item:
                        self.fail(
                            here,
                            f"holds {item[:80]!r}; torch resolves it by attribute lookup and it is "
                            "not 'name,dotted.target'",
                        )

    def _tensor_meta(self, value: Any, where: str) -> None:
        fields = self.record(value, where, _TENSOR_META_KEYS)
        self.choice(fields["dtype"], f"{where}.dtype", set(_DTYPE_SIZES), "dtype")
        self.boolean(fields["requires_grad"], f"{where}.requires_grad")
        self.device(fields["device"], f"{where}.device")
        self.choice(fields["layout"], f"{where}.layout", {_STRIDED}, "layout")
        for key in ("sizes", "strides"):
            for i, item in enumerate(self.sequence(fields[key], f"{where}.{key}")):
                self._sym(item, f"{where}.{key}[{i}]", frozenset({"as_expr", "as_int"}))
        self._sym(
            fields["storage_offset"], f"{where}.storage_offset", frozenset({"as_expr", "as_int"})
        )

    def _sym(self, value: Any, where: str, allowed: frozenset[str]) -> None:
        """A SymInt/SymFloat/SymBool: a literal, or an expression torch hands to sympify."""
        kind, inner = self.union(value, where, allowed)
        here = f"{where}.{kind}"
        if kind == "as_int":
            self.integer(inner, here)
        elif kind == "as_float":
            self.number(inner, here)
        elif kind == "as_bool":
            self.boolean(inner, here)
        else:
            fields = self.record(inner, here, {"expr_str"}, frozenset({"hint"}))
            self._expression(fields["expr_str"], f"{here}.expr_str")
            if fields.get("hint") is not None:
                hint_kind, hint = self.union(fields["hint"], f"{here}.hint", _HINT_KINDS)
                if hint_kind == "as_int":
                    self.integer(hint, f"{here}.hint.as_int")
                elif hint_kind == "as_bool":
                    self.boolean(hint, f"{here}.hint.as_bool")
                else:
                    self.number(hint, f"{here}.hint.as_float")

    def _expression(self, value: Any, where: str) -> None:
        expression = self.string(value, where, max_chars=_MAX_EXPR_CHARS)
        problem = _SymExprParser(expression).problem()
        if problem:
            self.fail(
                where,
                f"is the symbolic expression {expression[:120]!r}, which torch would hand to "
                f"sympy.sympify (an eval); it is outside the shape-expression grammar ({problem})",
                f"{_RECAPTURE}; torch writes expressions like \"Mul(Integer(4), Symbol('s0', "
                'positive=True, integer=True))"',
            )

    def _argument(self, value: Any, where: str, allowed: frozenset[str]) -> None:
        if isinstance(value, dict) and len(value) == 1:
            (kind,) = value
            if kind in _FORBIDDEN_ARGUMENTS and kind not in allowed:
                self.fail(where, _FORBIDDEN_ARGUMENTS[kind])
        kind, inner = self.union(value, where, allowed)
        here = f"{where}.{kind}"
        check = _ARGUMENT_CHECKS[kind]
        if kind in _LIST_KINDS:
            for i, item in enumerate(self.sequence(inner, here)):
                check(self, item, f"{here}[{i}]")
        else:
            check(self, inner, here)

    def _tensor_argument(self, value: Any, where: str) -> None:
        name = self.identifier(self.record(value, where, {"name"})["name"], f"{where}.name")
        self._tensor_refs.append(name)

    def _sym_argument(self, value: Any, where: str, literal: str) -> None:
        kind, inner = self.union(value, where, frozenset({"as_name", literal}))
        if kind == "as_name":
            self.identifier(inner, f"{where}.as_name")
        elif literal == "as_int":
            self.integer(inner, f"{where}.as_int")
        elif literal == "as_float":
            self.number(inner, f"{where}.as_float")
        else:
            self.boolean(inner, f"{where}.as_bool")

    def _optional_tensor(self, value: Any, where: str) -> None:
        kind, inner = self.union(value, where, frozenset({"as_tensor", "as_none"}))
        if kind == "as_tensor":
            self._tensor_argument(inner, f"{where}.as_tensor")
        else:
            self.boolean(inner, f"{where}.as_none")

    # -- signature and module call graph --

    def _signature(self, value: Any, payload_names: set[str]) -> None:
        where = "graph_module.signature"
        fields = self.record(value, where, {"input_specs", "output_specs"})
        for i, spec in enumerate(self.sequence(fields["input_specs"], f"{where}.input_specs")):
            self._input_spec(spec, f"{where}.input_specs[{i}]", payload_names)
        for i, spec in enumerate(self.sequence(fields["output_specs"], f"{where}.output_specs")):
            self._output_spec(spec, f"{where}.output_specs[{i}]")

    def _input_spec(self, spec: Any, where: str, payload_names: set[str]) -> None:
        if isinstance(spec, dict) and set(spec) & {"custom_obj", "token"}:
            self.fail(
                where,
                f"is a {next(iter(spec))!r} input: a custom (script) object or an effect token, "
                "which a probe never takes",
            )
        kind, inner = self.union(spec, where, _INPUT_SPECS)
        here = f"{where}.{kind}"
        if kind == "user_input":
            arg = self.record(inner, here, {"arg"})["arg"]
            self._argument(arg, f"{here}.arg", _GRAPH_INPUT_KINDS)
            return
        if kind == "constant_input":
            fields = self.record(inner, here, {"name", "value"})
            self.identifier(fields["name"], f"{here}.name")
            self._constant_value(fields["value"], f"{here}.value")
            return
        key = f"{kind}_name"  # parameter_name, buffer_name, tensor_constant_name
        optional = frozenset({"persistent"}) if kind == "buffer" else frozenset()
        fields = self.record(inner, here, {"arg", key}, optional)
        self._tensor_argument(fields["arg"], f"{here}.arg")
        if "persistent" in fields:
            self.boolean(fields["persistent"], f"{here}.persistent")
        target = self.fqn(fields[key], f"{here}.{key}")
        if target not in payload_names:
            self.fail(
                f"{here}.{key}",
                f"names {target!r}, which neither the weights nor the constants config holds",
            )

    def _output_spec(self, spec: Any, where: str) -> None:
        if isinstance(spec, dict) and "token" in spec:
            self.fail(where, "is an effect-token output, which a probe never returns")
        kind, inner = self.union(spec, where, _OUTPUT_SPECS)
        here = f"{where}.{kind}"
        if kind == "user_output":
            arg = self.record(inner, here, {"arg"})["arg"]
            self._argument(arg, f"{here}.arg", _ARGUMENT_KINDS)
            return
        key = _OUTPUT_NAME_KEYS[kind]
        fields = self.record(inner, here, {"arg", key} if key else {"arg"})
        self._tensor_argument(fields["arg"], f"{here}.arg")
        if key == "user_input_name":
            self.identifier(fields[key], f"{here}.{key}")
        elif key:
            self.fqn(fields[key], f"{here}.{key}")

    def _constant_value(self, value: Any, where: str) -> None:
        kind, inner = self.union(value, where, _CONSTANT_KINDS)
        _ARGUMENT_CHECKS[kind](self, inner, f"{where}.{kind}")

    def _module_call(self, value: Any, where: str) -> None:
        fields = self.record(value, where, {"fqn"}, frozenset({"signature"}))
        self.fqn(fields["fqn"], f"{where}.fqn", allow_empty=True)
        if fields.get("signature") is None:
            return
        here = f"{where}.signature"
        signature = self.record(
            fields["signature"],
            here,
            {"inputs", "outputs", "in_spec", "out_spec"},
            frozenset({"forward_arg_names"}),
        )
        for key in ("inputs", "outputs"):
            for i, item in enumerate(self.sequence(signature[key], f"{here}.{key}")):
                self._argument(item, f"{here}.{key}[{i}]", _ARGUMENT_KINDS)
        for key in ("in_spec", "out_spec"):
            text = self.string(signature[key], f"{here}.{key}", max_chars=_MAX_TEXT_CHARS)
            spec = self.embedded_json(text, f"{here}.{key}")
            if not isinstance(spec, list) or len(spec) != 2 or spec[0] != 1:
                self.fail(f"{here}.{key}", "is not a protocol-1 treespec [1, {...}]")
            self._treespec(spec[1], f"{here}.{key}", 0)
        names = signature.get("forward_arg_names")
        if names is not None:
            for i, name in enumerate(self.sequence(names, f"{here}.forward_arg_names")):
                self.identifier(name, f"{here}.forward_arg_names[{i}]")

    def _treespec(self, value: Any, where: str, depth: int) -> None:
        """A pytree spec node: a leaf, a tuple/list, or a dict whose keys are identifiers."""
        if depth > _MAX_JSON_DEPTH:
            self.fail(where, "nests treespecs too deeply")
        node = self.record(value, where, {"type", "context", "children_spec"})
        kind, context = node["type"], node["context"]
        children = self.sequence(node["children_spec"], f"{where}.children_spec")
        if kind not in _TREESPEC_TYPES:
            self.fail(
                where,
                f"has a {str(kind)[:80]!r} treespec node; torch imports or looks up such types "
                "(only tuple, list, dict and OrderedDict are allowed)",
            )
        if kind is None:
            if context is not None or children:
                self.fail(where, "is a leaf treespec with a context or children")
            return
        text = self.string(context, f"{where}.context", max_chars=_MAX_TEXT_CHARS)
        keys = self.embedded_json(text, f"{where}.context")
        if kind in ("builtins.tuple", "builtins.list"):
            keys_ok = keys is None
        else:
            keys_ok = (
                isinstance(keys, list)
                and len(keys) == len(children)
                and all(isinstance(key, str) and _is_identifier(key) for key in keys)
            )
        if not keys_ok:
            self.fail(
                f"{where}.context",
                f"is {text[:80]!r}; a tuple or list context is null and a dict context lists "
                "identifier keys (objects reach torch's enum hook, which imports modules, and "
                "ExportedProgram.module() pastes dict keys into generated code)",
            )
        for i, child in enumerate(children):
            self._treespec(child, f"{where}.children_spec[{i}]", depth + 1)


_OPERATOR_FIX = (
    "Probes may only call the core ATen operators listed in obstacle.artifacts.allowed_ops; "
    f"{_RECAPTURE} (it runs run_decompositions()), and if a model genuinely needs another pure "
    "operator, ask for it to be added to the allow-list"
)


_FORBIDDEN_ARGUMENTS = {
    "as_graph": "passes a subgraph, which only higher-order operators take",
    "as_custom_obj": "passes a custom (script/torchbind) object, which a probe never holds",
    "as_operator": "passes an operator as a value, which torch resolves by attribute lookup",
}

_ArgumentCheck = Callable[[_ProgramChecker, Any, str], None]


def _check_none(checker: _ProgramChecker, value: Any, where: str) -> None:
    if value is not None:
        checker.boolean(value, where)


def _check_int(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.integer(value, where)


def _check_bool(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.boolean(value, where)


def _check_string(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.string(value, where)
    checker.text(value, where)


def _check_sym_int(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker._sym_argument(value, where, "as_int")


def _check_sym_float(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker._sym_argument(value, where, "as_float")


def _check_sym_bool(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker._sym_argument(value, where, "as_bool")


def _check_dtype(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.choice(value, where, set(_DTYPE_SIZES), "dtype")


def _check_memory_format(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.choice(value, where, _MEMORY_FORMATS, "memory format")


def _check_layout(checker: _ProgramChecker, value: Any, where: str) -> None:
    checker.choice(value, where, {_STRIDED}, "layout")


def _check_complex(checker: _ProgramChecker, value: Any, where: str) -> None:
    fields = checker.record(value, where, {"real", "imag"})
    checker.number(fields["real"], f"{where}.real")
    checker.number(fields["imag"], f"{where}.imag")


# One check per allowed argument kind; a list kind applies its check to every item.
_ARGUMENT_CHECKS: dict[str, _ArgumentCheck] = {
    "as_none": _check_none,
    "as_tensor": _ProgramChecker._tensor_argument,
    "as_tensors": _ProgramChecker._tensor_argument,
    "as_int": _check_int,
    "as_ints": _check_int,
    "as_float": _JsonChecker.number,
    "as_floats": _JsonChecker.number,
    "as_string": _check_string,
    "as_strings": _check_string,
    "as_bool": _check_bool,
    "as_bools": _check_bool,
    "as_sym_int": _check_sym_int,
    "as_sym_ints": _check_sym_int,
    "as_sym_float": _check_sym_float,
    "as_sym_floats": _check_sym_float,
    "as_sym_bool": _check_sym_bool,
    "as_sym_bools": _check_sym_bool,
    "as_scalar_type": _check_dtype,
    "as_memory_format": _check_memory_format,
    "as_layout": _check_layout,
    "as_device": _JsonChecker.device,
    "as_optional_tensors": _ProgramChecker._optional_tensor,
    "as_optional_tensor": _ProgramChecker._optional_tensor,
    "as_complex": _check_complex,
}
_LIST_KINDS = frozenset(
    {
        "as_tensors", "as_ints", "as_floats", "as_strings", "as_bools", "as_sym_ints",
        "as_sym_floats", "as_sym_bools", "as_optional_tensors",
    }
)  # fmt: skip
