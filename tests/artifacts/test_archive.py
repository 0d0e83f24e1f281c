"""The program-archive validator: benign probes pass, every known attack is stopped unexecuted.

Each attack is a benign archive with rewritten zip entries. ``test_raw_torch_load_runs_the_attacks``
loads the same crafted files with plain ``torch.export.load`` in a subprocess and shows that the
payloads really run there, so each rejection below guards against a real attack.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import random
import re
import subprocess
import sys
import textwrap
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

import obstacle
from obstacle.artifacts import _grammar, _json, _program, _zip, allowed_ops, archive
from obstacle.artifacts.allowed_ops import ALLOWED_OPERATORS
from obstacle.artifacts.archive import ArchiveSummary, validate_program_archive
from obstacle.battery._safe_load import load_program_safely
from obstacle.errors import ParameterError, ProbeError, UnsafeArchiveError

if TYPE_CHECKING:
    from conftest import Benign, Tamper

SRC = Path(obstacle.__file__).parent


def _reject(path: Path, entry: str | None, *fragments: str, **limits: int) -> UnsafeArchiveError:
    """Assert the validator rejects ``path`` naming ``entry`` and each fragment; return the error."""
    with pytest.raises(UnsafeArchiveError) as caught:
        validate_program_archive(path, **limits)
    error = caught.value
    message = str(error)
    assert error.entry == entry, message
    assert message.startswith(str(path)), message
    if entry is not None:
        assert f"entry '{entry}'" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return error


def _with_node(program: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(program)
    changed["graph_module"]["graph"]["nodes"].append(node)
    return changed


def _node(target: str, inputs: list[dict[str, Any]], output: str = "evil") -> dict[str, Any]:
    return {
        "target": target,
        "inputs": inputs,
        "outputs": [{"as_tensor": {"name": output}}],
        "metadata": {},
        "is_hop_single_tensor_return": None,
        "name": output,
    }


def _from_file_node(path: Path, size: int) -> dict[str, Any]:
    """``aten.from_file(path, shared=False, size=size, dtype=uint8)``: reads a server file."""
    return _node(
        "torch.ops.aten.from_file.default",
        [
            {"name": "filename", "arg": {"as_string": str(path)}, "kind": 1},
            {"name": "shared", "arg": {"as_bool": False}, "kind": 1},
            {"name": "size", "arg": {"as_int": size}, "kind": 1},
            {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},
        ],
        output="leak",
    )


def _weight_path(tamper: Tamper, fqn: str) -> str:
    config = tamper.json(tamper.weights_config)["config"]
    return f"{tamper.root}/data/weights/{config[fqn]['path_name']}"


# -- the attacks: each returns the crafted archive ---------------------------------------------


def _pickled_sample_inputs(tamper: Tamper, marker: Path) -> Path:
    return tamper.write("sample.pt2", replace={tamper.sample_inputs: tamper.marker_pickle(marker)})


def _pickled_weights(tamper: Tamper, marker: Path) -> Path:
    config = tamper.json(tamper.weights_config)
    config["config"]["linear.weight"]["use_pickle"] = True
    return tamper.write(
        "weights.pt2",
        replace={
            tamper.weights_config: config,
            _weight_path(tamper, "linear.weight"): tamper.marker_pickle(marker),
        },
    )


def _opaque_constant(tamper: Tamper, marker: Path) -> Path:
    config = tamper.json(tamper.constants_config)
    config["config"]["scale"] = {
        "path_name": "opaque_obj_0",
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    return tamper.write(
        "opaque.pt2",
        replace={tamper.constants_config: config},
        add={f"{tamper.root}/data/constants/opaque_obj_0": tamper.marker_pickle(marker)},
    )


def _sympy_code(tamper: Tamper, marker: Path) -> Path:
    program = tamper.json(tamper.model_json)
    size = program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0]
    size["as_expr"]["expr_str"] = f"open('{marker}', 'w')"
    return tamper.write("sympy.pt2", replace={tamper.model_json: program})


def _guards_code(tamper: Tamper, marker: Path, *, sample_inputs: bytes = b"") -> Path:
    program = tamper.json(tamper.model_json)
    program["guards_code"] = [f"open('{marker}', 'w') is not None"]
    return tamper.write(
        "guards.pt2", replace={tamper.model_json: program, tamper.sample_inputs: sample_inputs}
    )


def _name_injection(tamper: Tamper, marker: Path) -> Path:
    """Rename input ``y`` so FX writes ``def forward(self, …, y=open(marker, 'w'))``."""
    text = tamper.read(tamper.model_json).decode()
    text = text.replace('"y"', json.dumps(f"y=open('{marker}', 'w')"))
    return tamper.write("name.pt2", replace={tamper.model_json: text})


def _fqn_injection(tamper: Tamper, marker: Path) -> Path:
    """A parameter FQN that ``module()`` pastes into ``getattr(self, "<fqn>")``; no dots allowed."""
    path = "str(bytes([" + ",".join(str(c) for c in str(marker).encode()) + "]),'ascii')"
    fqn = f'training"),open({path},"w"),str("'
    replace = {}
    for name in (tamper.model_json, tamper.weights_config):
        replace[name] = tamper.read(name).decode().replace('"linear.bias"', json.dumps(fqn))
    return tamper.write("fqn.pt2", replace=replace)


def _from_file(tamper: Tamper, secret: Path) -> Path:
    """A node that reads ``secret`` and becomes the program's output."""
    program = _with_node(
        tamper.json(tamper.model_json), _from_file_node(secret, secret.stat().st_size)
    )
    graph = program["graph_module"]["graph"]
    graph["tensor_values"]["leak"] = {
        "dtype": 1,
        "sizes": [{"as_int": secret.stat().st_size}],
        "requires_grad": False,
        "device": {"type": "cpu", "index": None},
        "strides": [{"as_int": 1}],
        "storage_offset": {"as_int": 0},
        "layout": 7,
    }
    graph["outputs"] = [{"as_tensor": {"name": "leak"}}]
    program["graph_module"]["signature"]["output_specs"] = [
        {"user_output": {"arg": {"as_tensor": {"name": "leak"}}}}
    ]
    return tamper.write("from_file.pt2", replace={tamper.model_json: program})


def _target(tamper: Tamper, target: str) -> Path:
    program = _with_node(
        tamper.json(tamper.model_json),
        _node(target, [{"name": "self", "arg": {"as_tensor": {"name": "x"}}, "kind": 1}]),
    )
    return tamper.write("target.pt2", replace={tamper.model_json: program})


# -- the benign archive ------------------------------------------------------------------------


def test_benign_archive_validates(benign: Benign) -> None:
    summary = validate_program_archive(benign.path)
    assert isinstance(summary, ArchiveSummary)
    with zipfile.ZipFile(benign.path) as zipped:
        infos = zipped.infolist()
    assert summary.entry_count == len(infos) == 13
    assert summary.uncompressed_bytes == sum(info.file_size for info in infos)
    assert "torch.ops.aten.addmm.default" in summary.operators
    assert set(summary.operators) <= ALLOWED_OPERATORS
    assert list(summary.operators) == sorted(summary.operators)
    assert summary.node_count >= len(summary.operators)


def test_benign_archive_round_trips_through_load_program_safely(benign: Benign) -> None:
    program = load_program_safely(benign.path)
    module = program.module()
    for batch in (5, 9):  # the batch dimension stayed dynamic
        x, y = benign.inputs(batch)
        torch.testing.assert_close(module(x, y), benign.model(x, y), rtol=1e-6, atol=1e-6)


def test_an_open_binary_file_is_accepted(benign: Benign) -> None:
    data = benign.path.read_bytes()
    assert validate_program_archive(io.BytesIO(data)).entry_count == 13


def test_limits_are_validated(benign: Benign) -> None:
    with pytest.raises(ParameterError, match=r"'max_entries' parameter must be an int"):
        validate_program_archive(benign.path, max_entries=0)


def test_a_missing_file_is_an_unsafe_archive_error(tmp_path: Path) -> None:
    _reject(tmp_path / "absent.pt2", None, "cannot be opened")


def test_a_valid_archive_torch_cannot_load_becomes_a_probe_error(tamper: Tamper) -> None:
    # A required operator argument left out: the schema walk has no operator schemas, torch has.
    program = tamper.json(tamper.model_json)
    program["graph_module"]["graph"]["nodes"][0]["inputs"].pop()
    path = tamper.write("short.pt2", replace={tamper.model_json: program})
    validate_program_archive(path)
    with pytest.raises(
        ProbeError, match=r"torch\.export\.load rejected the validated program"
    ) as caught:
        load_program_safely(path)
    assert not isinstance(caught.value, UnsafeArchiveError)


def test_a_tensor_used_before_its_definition_is_refused(tamper: Tamper) -> None:
    # Passed the validator on main, then failed in the worker's torch.export.load.
    program = tamper.json(tamper.model_json)
    first = program["graph_module"]["graph"]["nodes"][0]
    first["inputs"][0]["arg"] = {"as_tensor": {"name": "no_such_value"}}
    path = tamper.write("dangling.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "nodes[0].inputs", "'no_such_value'", "no graph input")


def test_a_node_output_missing_from_tensor_values_is_refused(tamper: Tamper) -> None:
    program = tamper.json(tamper.model_json)
    graph = program["graph_module"]["graph"]
    output = graph["nodes"][0]["outputs"][0]["as_tensor"]["name"]
    del graph["tensor_values"][output]
    path = tamper.write("undescribed.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, f"defines the tensor '{output}', which tensor_values lacks")


def test_a_stride_0_view_over_a_huge_size_is_refused(tamper: Tamper) -> None:
    # 4 stored bytes viewed as 2**40 float32 elements: accepted on main, and the worker's first
    # use of the weight would materialise 4 TiB.
    config = tamper.json(tamper.weights_config)
    fqn = next(iter(config["config"]))
    meta = config["config"][fqn]["tensor_meta"]
    meta["sizes"] = [{"as_int": 2**40}]
    meta["strides"] = [{"as_int": 0}]
    meta["storage_offset"] = {"as_int": 0}
    name = f"{tamper.root}/data/weights/{config['config'][fqn]['path_name']}"
    path = tamper.write("stride0.pt2", replace={tamper.weights_config: config, name: b"\0" * 4})
    _reject(path, tamper.weights_config, "strides", "overlap")


def test_an_overlapping_view_is_refused(tamper: Tamper) -> None:
    config = tamper.json(tamper.weights_config)
    fqn = next(iter(config["config"]))
    meta = config["config"][fqn]["tensor_meta"]
    sizes = [item["as_int"] for item in meta["sizes"]]
    assert len(sizes) == 2, sizes  # linear.weight, 3 x 4
    meta["strides"] = [{"as_int": 1}, {"as_int": 1}]  # rows overlap: elements 1..3 shared
    name = f"{tamper.root}/data/weights/{config['config'][fqn]['path_name']}"
    span = (sizes[0] - 1) + (sizes[1] - 1) + 1
    path = tamper.write(
        "overlap.pt2", replace={tamper.weights_config: config, name: b"\0" * 4 * span}
    )
    _reject(path, tamper.weights_config, "overlap")


def test_a_transposed_weight_is_accepted(tamper: Tamper) -> None:
    # A permuted (column-major) layout is a dense, non-overlapping view: torch saves those.
    config = tamper.json(tamper.weights_config)
    fqn = next(iter(config["config"]))
    meta = config["config"][fqn]["tensor_meta"]
    rows = meta["sizes"][0]["as_int"]
    meta["strides"] = [{"as_int": 1}, {"as_int": rows}]
    path = tamper.write("transposed.pt2", replace={tamper.weights_config: config})
    validate_program_archive(path)


# -- attacks that execute code under raw torch.export.load -------------------------------------

CODE_ATTACKS: list[tuple[str, Callable[[Tamper, Path], Path], str, tuple[str, ...]]] = [
    (
        "pickled sample inputs",
        _pickled_sample_inputs,
        "program/data/sample_inputs/model.pt",
        (
            "holds a pickle payload (starts with b'\\x80\\x02')",
            "never loads pickles",
            "Probe.capture",
        ),
    ),
    (
        "use_pickle weights",
        _pickled_weights,
        "program/data/weights/model_weights_config.json",
        ("config['linear.weight'].use_pickle", "use_pickle: true", "pickle payload"),
    ),
    (
        "opaque constant",
        _opaque_constant,
        "program/data/constants/opaque_obj_0",
        ("custom (script or opaque) object", "unpickles"),
    ),
    (
        "sympy expression",
        _sympy_code,
        "program/models/model.json",
        ("tensor_values['x'].sizes[0].as_expr.expr_str", "sympy.sympify", "grammar"),
    ),
    (
        "guards code",
        _guards_code,
        "program/models/model.json",
        ("guards_code[0]", "exec", "shape-guard grammar"),
    ),
    (
        "node name pasted into generated code",
        _name_injection,
        "program/models/model.json",
        ("not a plain Python identifier", "generates and executes"),
    ),
    (
        "parameter name pasted into generated code",
        _fqn_injection,
        "program/data/weights/model_weights_config.json",
        ("qualified name", "generated Python source"),
    ),
]


@pytest.mark.parametrize(
    ("build", "entry", "fragments"),
    [case[1:] for case in CODE_ATTACKS],
    ids=[case[0] for case in CODE_ATTACKS],
)
def test_code_execution_attacks_are_rejected_unexecuted(
    tamper: Tamper,
    tmp_path: Path,
    build: Callable[[Tamper, Path], Path],
    entry: str,
    fragments: tuple[str, ...],
) -> None:
    marker = tmp_path / "MARKER"
    path = build(tamper, marker)
    _reject(path, entry, *fragments)
    with pytest.raises(UnsafeArchiveError):
        load_program_safely(path)
    assert not marker.exists()


def test_from_file_is_rejected(tamper: Tamper, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("server secret\n")
    _reject(
        _from_file(tamper, secret),
        "program/models/model.json",
        "nodes[",
        "'torch.ops.aten.from_file.default'",
        "allow-list",
        "allowed_ops",
    )
    with pytest.raises(UnsafeArchiveError):
        load_program_safely(_from_file(tamper, secret))


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        # An unregistered namespace fails to resolve under raw torch (a SerializeError), and
        # `os.system` reached through `torch.serialization.os` is stopped by torch's verifier
        # only because it is not an OpOverload; the validator rejects both before torch runs.
        ("torch.ops.mylib.leak.default", "operator namespace 'mylib'"),
        ("torch.serialization.os.system", "not an ATen operator"),
        ("#mylib:leak", "not an ATen operator"),
        ("torch.ops.higher_order.cond", "higher-order operator"),
        ("torch.ops.aten.set_.source_Storage", "not in the allow-list"),
        ("torch.ops.aten.empty.memory_format", "not in the allow-list"),
    ],
)
def test_operators_outside_the_allow_list_are_rejected(
    tamper: Tamper, target: str, fragment: str
) -> None:
    _reject(_target(tamper, target), "program/models/model.json", fragment, repr(target))


_RAW_LOAD = textwrap.dedent(
    """
    import json, sys, torch
    cases, x, y = json.loads(sys.argv[1]), torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    results = {}
    for name, path in cases.items():
        stage = "start"
        try:
            program = torch.export.load(path)
            stage = "loaded"
            out = program.module()(x, y)
            stage = "ran"
            if out.dtype == torch.uint8:
                results[name + ":output"] = bytes(out.tolist()).decode()
        except Exception as exc:
            stage += f" then {type(exc).__name__}"
        results[name] = stage
    print(json.dumps(results))
    """
)


def test_raw_torch_load_runs_the_attacks(tamper: Tamper, tmp_path: Path) -> None:
    """Proof the attacks are real: plain torch.export.load (+ module()) executes each payload."""
    markers = {name: tmp_path / f"marker-{i}" for i, (name, *_) in enumerate(CODE_ATTACKS)}
    paths = {name: str(build(tamper, markers[name])) for name, build, *_ in CODE_ATTACKS}
    # torch only runs guards_code when the program carries example inputs: add benign ones
    # (tensors, so weights_only=True loads them and the guard string is what executes).
    buffer = io.BytesIO()
    torch.save(((torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])), {}), buffer)
    paths["guards code"] = str(
        _guards_code(tamper, markers["guards code"], sample_inputs=buffer.getvalue())
    )
    secret = tmp_path / "secret.txt"
    secret.write_text("server secret\n")
    paths["from_file"] = str(_from_file(tamper, secret))

    completed = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _RAW_LOAD, json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    ran = {name for name, marker in markers.items() if marker.exists()}
    assert ran == set(markers), f"payloads that did not run: {set(markers) - ran}; {results}"
    assert results["from_file:output"] == "server secret\n", results


# -- attacks on other fields of the program -----------------------------------------------------


def test_custom_object_constant_in_config_is_rejected(tamper: Tamper) -> None:
    config = tamper.json(tamper.constants_config)
    config["config"]["scale"]["path_name"] = "custom_obj_0"
    path = tamper.write("custom.pt2", replace={tamper.constants_config: config})
    _reject(path, tamper.constants_config, "custom (script or opaque) object")


def test_custom_object_input_spec_is_rejected(tamper: Tamper) -> None:
    program = tamper.json(tamper.model_json)
    program["graph_module"]["signature"]["input_specs"].append(
        {
            "custom_obj": {
                "arg": {"name": "obj", "class_fqn": "__torch__.Evil"},
                "custom_obj_name": "o",
            }
        }
    )
    path = tamper.write("custom_spec.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "'custom_obj' input", "input_specs[")


def test_custom_object_argument_is_rejected(tamper: Tamper) -> None:
    program = _with_node(
        tamper.json(tamper.model_json),
        _node(
            "torch.ops.aten.clone.default",
            [{"name": "self", "arg": {"as_custom_obj": {"name": "o", "class_fqn": "x"}}}],
        ),
    )
    path = tamper.write("custom_arg.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "custom (script/torchbind) object")


def test_subgraph_argument_is_rejected(tamper: Tamper) -> None:
    program = tamper.json(tamper.model_json)
    graph = copy.deepcopy(program["graph_module"]["graph"])
    program = _with_node(
        program,
        _node(
            "torch.ops.aten.clone.default",
            [{"name": "self", "arg": {"as_graph": {"name": "sub", "graph": graph}}}],
        ),
    )
    path = tamper.write("subgraph.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "subgraph")


def test_range_constraint_bound_must_be_an_integer(tamper: Tamper, tmp_path: Path) -> None:
    program = tamper.json(tamper.model_json)
    (symbol,) = program["range_constraints"]
    program["range_constraints"][symbol]["min_val"] = f"open('{tmp_path / 'm'}', 'w')"
    path = tamper.write("range.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, f"range_constraints['{symbol}'].min_val", "must be an integer")


def test_unbacked_symbol_counter_is_bounded(tamper: Tamper) -> None:
    """torch loops once per unit of the number after 'u': 'u99999999999' would spin for hours."""
    program = tamper.json(tamper.model_json)
    program["range_constraints"]["u99999999999"] = {"min_val": 0, "max_val": None}
    path = tamper.write("unbacked.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "at most six digits")


def _in_spec_dict_node(program: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    signature = program["graph_module"]["module_call_graph"][0]["signature"]
    spec = json.loads(signature["in_spec"])
    return signature, spec


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (
            lambda node: node.update(
                context=json.dumps([{"__enum__": True, "fqn": "antigravity:Fly", "name": "x"}])
            ),
            "enum hook",
        ),
        (lambda node: node.update(type="collections.defaultdict"), "imports or looks up"),
        (
            # gen_var_bindings pastes dict keys into ExportedProgram.module()'s source as '{k}'.
            lambda node: node.update(
                context=json.dumps(["k':0, **__import__('os').system('id') or {}, 'j"]),
                children_spec=[{"type": None, "context": None, "children_spec": []}],
            ),
            "identifier keys",
        ),
    ],
    ids=["enum hook", "defaultdict import", "dict key pasted into code"],
)
def test_treespec_imports_are_rejected(
    tamper: Tamper, edit: Callable[[dict[str, Any]], None], fragment: str
) -> None:
    program = tamper.json(tamper.model_json)
    signature, spec = _in_spec_dict_node(program)
    edit(spec[1]["children_spec"][1])  # the kwargs dict of (args, kwargs)
    signature["in_spec"] = json.dumps(spec)
    path = tamper.write("treespec.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "module_call_graph[0].signature.in_spec", fragment)


def test_metadata_keys_are_allow_listed(tamper: Tamper) -> None:
    program = tamper.json(tamper.model_json)
    program["graph_module"]["graph"]["nodes"][0]["metadata"]["val"] = "x"
    path = tamper.write("meta.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "has the key 'val'")


def test_source_fn_stack_must_name_plain_targets(tamper: Tamper) -> None:
    program = tamper.json(tamper.model_json)
    program["graph_module"]["graph"]["nodes"][0]["metadata"]["source_fn_stack"] = "l,os.__class__"
    path = tamper.write("source_fn.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "source_fn_stack")


def test_unknown_schema_fields_are_rejected(tamper: Tamper) -> None:
    program = tamper.json(tamper.model_json)
    program["future_field"] = "eval me"
    path = tamper.write("unknown.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "outside torch 2.13's export schema")


def test_other_schema_major_versions_are_rejected(tamper: Tamper) -> None:
    program = tamper.json(tamper.model_json)
    program["schema_version"]["major"] = 9
    path = tamper.write("schema.pt2", replace={tamper.model_json: program})
    _reject(path, tamper.model_json, "schema_version.major")


# -- JSON parsing ------------------------------------------------------------------------------


def test_duplicate_json_keys_are_rejected(tamper: Tamper) -> None:
    text = tamper.read(tamper.model_json).decode()
    text = text.replace('"graph_module": {', '"graph_module": {"graph": {}, ', 1)
    path = tamper.write("duplicate_key.pt2", replace={tamper.model_json: text})
    _reject(path, tamper.model_json, "duplicate key 'graph'")


def test_nan_literals_are_rejected(tamper: Tamper) -> None:
    text = tamper.read(tamper.model_json).decode()
    text = re.sub(r'"min_val": [0-9]+', '"min_val": NaN', text, count=1)
    path = tamper.write("nan.pt2", replace={tamper.model_json: text})
    _reject(path, tamper.model_json, "non-standard constant NaN")


def test_deep_json_nesting_is_rejected(tamper: Tamper) -> None:
    text = tamper.read(tamper.model_json).decode()
    text = text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = tamper.write("deep.pt2", replace={tamper.model_json: text})
    _reject(path, tamper.model_json, "nesting depth 100001 is over the limit of 64")


def test_oversized_json_is_rejected(benign: Benign) -> None:
    _reject(benign.path, "program/models/model.json", "bytes of JSON", max_json_bytes=1000)


# -- payloads ----------------------------------------------------------------------------------


def test_weight_size_must_match_dtype_and_shape(tamper: Tamper) -> None:
    name = _weight_path(tamper, "linear.weight")
    path = tamper.write("size.pt2", replace={name: tamper.read(name) + b"\0\0\0\0"})
    _reject(path, name, "holds 52 bytes", "need exactly 48 raw bytes")


def test_unreferenced_payloads_are_rejected(tamper: Tamper) -> None:
    name = f"{tamper.root}/data/weights/weight_99"
    _reject(tamper.write("orphan.pt2", add={name: b"\0" * 4}), name, "not referenced")


def test_nonempty_sample_inputs_are_rejected_even_without_pickle_magic(tamper: Tamper) -> None:
    path = tamper.write("sample_text.pt2", replace={tamper.sample_inputs: b"(lp0\n."})
    _reject(path, tamper.sample_inputs, "is not empty (6 bytes")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("program/data/aotinductor/model/model.so", "shared library"),
        ("program/models/second.json", "second exported program"),
        ("program/data/weights/model.pt", "holds a pickle"),
        ("program/data/constants/custom_obj_0", "custom (script or opaque) object"),
        ("program/extra/notes.txt", "extra file"),
        ("program/data.pkl", "holds a pickle"),
    ],
)
def test_entries_outside_the_allow_list_are_rejected(
    tamper: Tamper, name: str, fragment: str
) -> None:
    path = tamper.write("extra.pt2", add={name: b"\x80\x02N."})
    _reject(path, name, fragment, "only the entries of a single torch.export program")


def test_missing_entries_are_rejected(tamper: Tamper) -> None:
    path = tamper.write("missing.pt2", drop=(tamper.sample_inputs,))
    _reject(path, tamper.sample_inputs, "is missing")


# -- the zip container -------------------------------------------------------------------------


def test_not_a_zip_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "text.pt2"
    path.write_bytes(b"hello, world")
    _reject(path, None, "not a zip file", "b'hell'")


def test_a_bare_pickle_is_rejected(tmp_path: Path, tamper: Tamper) -> None:
    path = tmp_path / "pickle.pt2"
    path.write_bytes(tamper.marker_pickle(tmp_path / "m"))
    _reject(path, None, "is a pickle")


def test_truncated_archive_is_rejected(benign: Benign, tmp_path: Path) -> None:
    data = benign.path.read_bytes()
    path = tmp_path / "truncated.pt2"
    path.write_bytes(data[: len(data) // 2])
    _reject(path, None, "truncated")


def test_corrupted_entry_fails_its_crc(benign: Benign, tmp_path: Path, tamper: Tamper) -> None:
    name = _weight_path(tamper, "linear.weight")
    data = bytearray(benign.path.read_bytes())
    at = data.index(tamper.read(name))
    data[at] ^= 0xFF
    path = tmp_path / "corrupt.pt2"
    path.write_bytes(bytes(data))
    _reject(path, name, "cannot be read", "CRC")


def test_zip_bomb_is_rejected(tamper: Tamper) -> None:
    path = tamper.directory / "bomb.pt2"
    with zipfile.ZipFile(tamper.source) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            out.writestr(info, source.read(info))
        out.writestr("program/bomb", b"\0" * (16 << 20), compress_type=zipfile.ZIP_DEFLATED)
    _reject(path, "program/bomb", "zip bomb", "ratio over 100")


def test_compressed_entries_are_rejected(tamper: Tamper) -> None:
    path = tamper.directory / "deflated.pt2"
    with zipfile.ZipFile(tamper.source) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith("model.json") else None
            out.writestr(info.filename, source.read(info), compress_type=method)
    _reject(path, tamper.model_json, "is compressed (method 8)")


def test_oversized_archive_is_rejected(benign: Benign) -> None:
    _reject(benign.path, None, "over the limit of 1000 bytes", max_bytes=1000)


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk: zeros, so not a zip (nor a pickle)."""
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def test_the_sdk_service_and_worker_share_one_program_size_limit(tmp_path: Path) -> None:
    """A 124M-parameter float32 model's program (~500 MB) and more pass the size check everywhere;
    over the one limit, the validator and the worker's loader refuse it before reading it."""
    from obstacle.artifacts import bundle

    assert bundle.MAX_PROGRAM_BYTES is archive.MAX_PROGRAM_BYTES == 2 * 2**30
    assert validate_program_archive.__kwdefaults__ == {
        "max_bytes": archive.MAX_PROGRAM_BYTES,
        "max_entries": 10_000,
        "max_json_bytes": 64 * 2**20,
    }
    gpt2_small = _sparse(tmp_path / "gpt2-small.pt2", 600 * 2**20)
    with pytest.raises(UnsafeArchiveError, match="not a zip file"):  # past the size check
        validate_program_archive(gpt2_small)
    huge = _sparse(tmp_path / "huge.pt2", archive.MAX_PROGRAM_BYTES + 1)
    over = (
        rf"is {archive.MAX_PROGRAM_BYTES + 1} bytes, over the limit of {archive.MAX_PROGRAM_BYTES}"
    )
    with pytest.raises(UnsafeArchiveError, match=over + r".*4 bytes per float32 parameter"):
        validate_program_archive(huge)
    with pytest.raises(UnsafeArchiveError, match=over + r".*4 bytes per float32 parameter"):
        load_program_safely(huge)


def test_too_many_entries_are_rejected(benign: Benign) -> None:
    _reject(benign.path, None, "over the limit of 5 entries", max_entries=5)


def test_uncompressed_total_is_bounded(tamper: Tamper) -> None:
    """Entries that compress less than the bomb ratio still count against the total."""
    path = tamper.directory / "big.pt2"
    noise = random.Random(0).randbytes(150_000).hex().encode()  # deflates about 2x, no bomb
    with zipfile.ZipFile(tamper.source) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            out.writestr(info, source.read(info))
        out.writestr("program/big", noise, compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 250_000 < len(noise)
    _reject(path, "program/big", "uncompressed total", max_bytes=250_000)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("program/../../etc/cron.d/evil", "'.'/'..' segment"),
        ("/program/evil", "absolute path"),
        ("program/a\\..\\evil", "name outside [A-Za-z0-9._/-]"),
        ("other/archive_format", "second top-level folder"),
        ("version", "top-level folder"),
    ],
)
def test_entry_names_are_checked(tamper: Tamper, name: str, fragment: str) -> None:
    _reject(tamper.write("names.pt2", add={name: b"1"}), name, fragment)


def test_duplicate_entry_names_are_rejected(tamper: Tamper) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate
        path = tamper.write("dup.pt2", add={tamper.sample_inputs: b""})
    _reject(path, tamper.sample_inputs, "appears twice")


def test_bytes_before_the_first_entry_are_rejected(benign: Benign, tmp_path: Path) -> None:
    path = tmp_path / "prefixed.pt2"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 60 + benign.path.read_bytes())
    _reject(path, None, "bytes before its first entry")


def test_overlapping_entries_are_rejected(tamper: Tamper) -> None:
    """Point the sample-inputs directory record at the first entry's bytes."""
    data = bytearray(tamper.source.read_bytes())
    name = tamper.sample_inputs.encode()
    record = data.rindex(b"PK\x01\x02", 0, data.rindex(name))
    assert data[record + 46 : record + 46 + len(name)] == name
    data[record + 42 : record + 46] = (0).to_bytes(4, "little")
    path = tamper.directory / "overlap.pt2"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeArchiveError, match="overlaps the next zip record"):
        validate_program_archive(path)


def test_zip_comments_are_rejected(tamper: Tamper) -> None:
    path = tamper.write("comment.pt2")
    with zipfile.ZipFile(path, "a") as zipped:
        zipped.comment = b"hello"
    _reject(path, None, "zip comment")


# -- the grammars ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "Symbol('s17', positive=True, integer=True)",
        "Add(Mul(Integer(84), Symbol('s17', positive=True, integer=True)), Integer(7))",
        "Integer(-1)",
        "s0",
        "2*s0 + 1",
        "FloorDiv(s0, 2) + Mod(s1, 3)",
        "CeilToInt(s0) // 4",
        "Max(1, Min(s0, 64))",
        "Eq(s0, 3)",
        "s0 >= 2",
        "-oo",
        "int_oo",
        "True",
        "Symbol('batch', integer=True)",
        "(u3 + 1) % 2",
    ],
)
def test_shape_expressions_torch_writes_are_accepted(expression: str) -> None:
    assert archive._SymExprParser(expression).problem() is None


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('touch MARKER')",
        "open('/etc/passwd')",
        "s0.__class__",
        "lambda: 1",
        "exec('1')",
        "eval",
        "Symbol('s0').subs(1, 2)",
        "Symbol('__class__')",
        "Symbol('s0', evaluate=eval)",
        "Pow(s0, 99999999)",
        "s0**2",
        "Float('1.5', precision=53)",
        "'s0'",
        "Integer(1",
        "1" * 30,
        "s0; import os",
        "s0\nimport os",
        "[s0]",
        "Add(" * 40 + "1" + ")" * 40,
        "",
    ],
)
def test_shape_expressions_carrying_code_are_rejected(expression: str) -> None:
    assert archive._SymExprParser(expression).problem()


@pytest.mark.parametrize(
    "guard",
    [
        "L['x'].size()[0] == L['y'].size()[0]",
        "L['batch'][0].size()[0] == L['batch'][1].size()[0]",
        "2 <= L['x'].size()[0]",
        "L['x'].size()[1] == 2*L['y'].size()[1] + 1",
        "L['x'].stride()[0] == 4 and not L['x'].storage_offset() == 1",
        "(L['x'].size()[0] % 2) == 0 or L['x'].size()[0] // 2 < 8",
    ],
)
def test_guards_torch_writes_are_accepted(guard: str) -> None:
    assert archive._GuardParser(guard).problem() is None


@pytest.mark.parametrize(
    "guard",
    [
        "__import__('os').system('touch MARKER') == 0",
        "L['x'].size()[0] == 1 or open('m', 'w')",
        'L["x"].size()[0] == 1',
        "L['x'].__class__",
        "L['x'].numpy()",
        "L['x'].size()[0] == 1\nimport os",
        'L[\'x\'].size()[0] == 1, "x"), print("x',
        "L['x'] if 1 else 2",
        "lambda: 0",
        "L",
    ],
)
def test_guards_carrying_code_are_rejected(guard: str) -> None:
    assert archive._GuardParser(guard).problem()


# -- structure of the project ------------------------------------------------------------------


def test_validator_modules_import_nothing_but_the_stdlib_and_obstacle() -> None:
    allowed = set(sys.stdlib_module_names) | {"obstacle"}
    for module in (archive, _zip, _json, _grammar, _program, allowed_ops):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed | {"__future__"}, (module.__name__, name)


def test_only_the_safe_loader_calls_torch_export_load() -> None:
    pattern = re.compile(r"export\.load\s*\(|load_pt2\s*\(|\.serde\.serialize import deserialize")
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.name != "_safe_load.py" and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
