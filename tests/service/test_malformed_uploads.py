"""Malformed files of every uploaded format, through the real upload routes: never a 500.

Hand-made malformed files (deep nesting, 5,000-digit numbers, huge declared lengths, compressed
and overlapping zip members, stride-0 views, dangling graph values, ...) and hypothesis-driven
mutations (byte flips, truncations, header rewrites) of a real run's safetensors checkpoint,
optimizer state, probe bundle (its manifest, data and ``.pt2`` program) and ``train_log.jsonl``
are sent to the FastAPI app (real SQLite, real artifact store). For each answer: no 5xx; a 4xx is
an ``application/problem+json`` with a non-empty ``detail`` and leaves no row, no stored file and
no spooled upload behind; a 2xx file is one the workers' reader loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as load_safetensors

from conftest_services import Tenant, make_settings, make_tenant, sha_headers
from obstacle.artifacts.bundle import pack_probe
from obstacle.artifacts.layout import (
    PROBE_DATA,
    PROBE_DIR,
    PROBE_MANIFEST,
    PROBE_PROGRAM,
    list_checkpoints,
    optimizer_filename,
)
from obstacle.platform.keys import train_log_key
from obstacle.platform.store import ArtifactStore
from obstacle.service.app import create_app
from obstacle.service.settings import Settings
from service.bundles import modified_safetensors, probe_files, tensors

MUTATIONS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Service:
    client: TestClient
    tenant: Tenant
    settings: Settings
    run_dir: Path
    probed_run: str  # has the probe: checkpoints and optimizer states go here
    log_run: str  # train logs go here
    next_step: Iterator[int]
    answers: Counter[str] = field(default_factory=Counter)
    cases: Counter[str] = field(default_factory=Counter)  # malformed files sent, by format

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.settings.resolved_artifact_url)

    def put(self, url: str, body: bytes) -> httpx.Response:
        response = self.client.put(
            url, content=body, headers=sha_headers(body, self.tenant.headers)
        )
        self.answers[f"{response.status_code // 100}xx"] += 1
        assert response.status_code < 500, response.text
        assert list(self.settings.resolved_upload_tmp_dir.iterdir()) == []  # no spooled leftover
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json", response.text
            problem = response.json()
            assert problem["status"] == response.status_code
            assert isinstance(problem["detail"], str) and problem["detail"].strip(), problem
        return response

    def new_run(self) -> str:
        response = self.client.post("/v1/runs", json={"name": "fuzz"}, headers=self.tenant.headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@pytest.fixture(scope="module")
def service(
    sqlite_database_url: str,
    redis_url: str,
    tiny_run: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    config = make_settings(
        sqlite_database_url,
        redis_url,
        tmp_path_factory.mktemp("malformed"),
        max_probe_bytes=8 << 20,
    )
    tenant = make_tenant(sqlite_database_url, "fuzz")
    with TestClient(create_app(config)) as client:
        probed = client.post("/v1/runs", json={"name": "f"}, headers=tenant.headers).json()["id"]
        bundle = pack_probe(tiny_run / PROBE_DIR)
        answer = client.put(
            f"/v1/runs/{probed}/probe", content=bundle, headers=sha_headers(bundle, tenant.headers)
        )
        assert answer.status_code == 201, answer.text
        log_run = client.post("/v1/runs", json={"name": "l"}, headers=tenant.headers).json()["id"]
        steps = iter(range(1000, 10**6))
        service = Service(client, tenant, config, tiny_run, probed, log_run, steps)
        yield service
    total = sum(service.answers.values())
    print(
        f"\nmalformed uploads: {sum(service.cases.values())} cases {dict(service.cases)}; "
        f"{total} answers {dict(service.answers)}"
    )


# -- the well-formed files each case starts from --------------------------------------------------


def _base_checkpoint(run_dir: Path) -> bytes:
    _step, path = list_checkpoints(run_dir)[0]
    # Without its step, a checkpoint can go to any step: each case gets a step of its own.
    return modified_safetensors(path.read_bytes(), step=None)


def _base_optimizer(run_dir: Path) -> bytes:
    step, _ = list_checkpoints(run_dir)[0]
    data = (run_dir / "checkpoints" / optimizer_filename(step)).read_bytes()
    return modified_safetensors(data, step=None)


def _safetensors(header: bytes | str, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def _header_of(blob: bytes) -> tuple[dict[str, Any], bytes]:
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def _deep(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def _hand_made_safetensors(base: bytes) -> list[tuple[str, bytes]]:
    """Every way a safetensors upload went wrong on main, and its neighbours."""
    header, data = _header_of(base)
    first = next(k for k in header if k != "__metadata__")
    entry = json.dumps(header[first])
    text = json.dumps(header)
    meta = header.get("__metadata__", {})
    huge = "9" * 5000
    cases = [
        ("empty", b""),
        ("7 bytes", b"\x01" * 7),
        ("length only", struct.pack("<Q", 10)),
        ("100 MiB header length", struct.pack("<Q", 100 * 2**20) + b"{" + b" " * 64),
        ("2**64-1 header length", b"\xff" * 8 + b"{}"),
        ("header longer than file", struct.pack("<Q", 1000) + b"{}"),
        ("header not json", _safetensors(b"not json", data)),
        ("header not utf-8", _safetensors(b'{"\xff": 1}', data)),
        ("header a list", _safetensors("[1, 2]", data)),
        ("header leading space", _safetensors(" " + text, data)),
        ("deep nesting in header", _safetensors('{"x": ' + _deep(100_000) + "}", data)),
        ("deep nesting 200", _safetensors('{"x": ' + _deep(200) + "}", data)),
        ("deep nesting in metadata", _safetensors('{"__metadata__": ' + _deep(5000) + "}", data)),
        ("5000-digit shape", _safetensors(text.replace(entry, entry.replace('"shape": [', '"shape": [' + huge + ", ")), data)),
        ("5000-digit offset", _safetensors(text.replace('"data_offsets": [0', '"data_offsets": [' + huge), data)),
        ("1e999 offset", _safetensors(text.replace('"data_offsets": [0', '"data_offsets": [1e999'), data)),
        ("float offsets", _safetensors(text.replace('"data_offsets": [0', '"data_offsets": [0.0'), data)),
        ("negative offset", _safetensors(text.replace('"data_offsets": [0', '"data_offsets": [-8'), data)),
        ("NaN literal", _safetensors(text.replace('"data_offsets": [0', '"data_offsets": [NaN'), data)),
        ("duplicate tensor", _safetensors(text[:-1] + f', "{first}": {entry}}}', data)),
        ("unknown dtype", _safetensors(text.replace('"F64"', '"C128"').replace('"F32"', '"C128"'), data)),
        ("shape overflow", _safetensors(text.replace('"shape": [', '"shape": [4294967296, 4294967296, 0, '), data)),
        ("truncated data", _safetensors(text, data[:-1])),
        ("trailing data", _safetensors(text, data + b"\0" * 8)),
        ("no data", _safetensors(text)),
        ("metadata not strings", _safetensors(json.dumps({**header, "__metadata__": {"lr": 0.1}}), data)),
        ("metadata huge value", _safetensors(json.dumps({**header, "__metadata__": {**meta, "x": "v" * (2 << 20)}}), data)),
        ("metadata 5000-digit lr", _safetensors(json.dumps({**header, "__metadata__": {**meta, "lr": huge}}), data)),
        ("metadata lr nan", _safetensors(json.dumps({**header, "__metadata__": {**meta, "lr": "nan"}}), data)),
        ("metadata lr negative", _safetensors(json.dumps({**header, "__metadata__": {**meta, "lr": "-1"}}), data)),
        ("metadata batch_size huge", _safetensors(json.dumps({**header, "__metadata__": {**meta, "batch_size": huge}}), data)),
        ("metadata step text", _safetensors(json.dumps({**header, "__metadata__": {**meta, "step": "ten"}}), data)),
        ("optimizer deep", _safetensors(json.dumps({**header, "__metadata__": {**meta, "optimizer": _deep(100_000)}}), data)),
        ("optimizer 5000 digits", _safetensors(json.dumps({**header, "__metadata__": {**meta, "optimizer": '{"class": "SGD", "hyperparameters": {"lr": ' + huge + "}}"}}), data)),
        ("optimizer not json", _safetensors(json.dumps({**header, "__metadata__": {**meta, "optimizer": "{"}}), data)),
        ("optimizer a list", _safetensors(json.dumps({**header, "__metadata__": {**meta, "optimizer": "[1]"}}), data)),
        ("optimizer class not text", _safetensors(json.dumps({**header, "__metadata__": {**meta, "optimizer": '{"class": 1, "hyperparameters": {}}'}}), data)),
        ("optimizer NaN literal", _safetensors(json.dumps({**header, "__metadata__": {**meta, "optimizer": '{"class": "SGD", "hyperparameters": {"lr": NaN}}'}}), data)),
        ("a pickle", b"\x80\x04\x95" + b"\0" * 64),
        ("a zip", b"PK\x03\x04" + b"\0" * 64),
    ]  # fmt: skip
    return cases


def _hand_made_optimizer(base: bytes) -> list[tuple[str, bytes]]:
    header, data = _header_of(base)
    name = next(k for k in header if k != "__metadata__")
    entry = header[name]
    meta = header.get("__metadata__", {})
    slot, _, parameter = name.partition("/")
    return [
        ("no slot", _safetensors(json.dumps({"__metadata__": meta, parameter: entry}), data)),
        ("unknown parameter", _safetensors(json.dumps({"__metadata__": meta, f"{slot}/nope": entry}), data)),
        ("step mismatch", _safetensors(json.dumps({**header, "__metadata__": {**meta, "step": "1"}}), data)),
        ("step 5000 digits", _safetensors(json.dumps({**header, "__metadata__": {**meta, "step": "9" * 5000}}), data)),
        ("deep", _safetensors('{"__metadata__": {}, "a/b": ' + _deep(50_000, "{}") + "}", data)),
        ("huge number", _safetensors('{"__metadata__": {}, "a": {"dtype": "F32", "shape": [' + "7" * 6000 + '], "data_offsets": [0, 4]}}', data)),
    ]  # fmt: skip


# -- checkpoints ---------------------------------------------------------------------------------


def _send_checkpoint(service: Service, body: bytes) -> None:
    service.cases["checkpoint"] += 1
    step = next(service.next_step)
    url = f"/v1/runs/{service.probed_run}/checkpoints/{step}"
    response = service.put(url, body)
    prefix = f"runs/{service.probed_run}/checkpoints/{step:09d}"
    if response.status_code >= 400:
        got = service.client.get(url, headers=service.tenant.headers)
        assert got.status_code == 404, got.text
        assert service.store.list_keys(prefix) == []
    else:
        load_safetensors(body)  # what was accepted, the workers' safetensors reads


def test_hand_made_malformed_checkpoints(service: Service) -> None:
    base = _base_checkpoint(service.run_dir)
    for _name, body in _hand_made_safetensors(base):
        _send_checkpoint(service, body)


@MUTATIONS
@given(data=st.data())
def test_mutated_checkpoints(service: Service, data: st.DataObject) -> None:
    base = _base_checkpoint(service.run_dir)
    _send_checkpoint(service, data.draw(_mutations(base), label="checkpoint"))


# -- optimizer states ------------------------------------------------------------------------------


def _send_optimizer(service: Service, body: bytes) -> None:
    service.cases["optimizer state"] += 1
    step = next(service.next_step)
    base = _base_checkpoint(service.run_dir)
    url = f"/v1/runs/{service.probed_run}/checkpoints/{step}"
    assert service.put(url, base).status_code == 201  # names its optimizer: the state is read
    response = service.put(f"{url}/optimizer", body)
    if response.status_code >= 400:
        row = service.client.get(url, headers=service.tenant.headers).json()
        assert row.get("optimizer_sha256") is None, row
        keys = service.store.list_keys(f"runs/{service.probed_run}/checkpoints/{step:09d}")
        assert not [key for key in keys if key.endswith(".optim.safetensors")], keys
    else:
        load_safetensors(body)


def test_hand_made_malformed_optimizer_states(service: Service) -> None:
    base = _base_optimizer(service.run_dir)
    for _name, body in [*_hand_made_safetensors(base), *_hand_made_optimizer(base)]:
        _send_optimizer(service, body)


def _optimizer_the_worker_refuses(base: bytes) -> list[tuple[str, bytes, str]]:
    """Optimizer states main accepted with 201 and the workers' optimizer step then refused."""
    state = tensors(base)
    slot_key = next(iter(state))
    parameter = slot_key.partition("/")[2]
    as_int = {slot_key: state[slot_key].astype(np.int64)}
    return [
        ("int slot", modified_safetensors(base, as_int), "(optimizer slots hold floats)"),
        *[
            (
                f"step {value}",
                modified_safetensors(base, {f"step/{parameter}": np.array(value, np.float32)}),
                "the step count must be one finite number >= 0",
            )
            for value in (-1.0, float("nan"), float("inf"))
        ],
        (
            "step of 3",
            modified_safetensors(base, {f"step/{parameter}": np.zeros(state[slot_key].shape, np.float32)}),
            "the step count must be one",
        ),
    ]  # fmt: skip


def test_optimizer_states_the_worker_would_refuse_are_refused(service: Service) -> None:
    base = _base_optimizer(service.run_dir)
    for _name, body, fragment in _optimizer_the_worker_refuses(base):
        step = next(service.next_step)
        url = f"/v1/runs/{service.probed_run}/checkpoints/{step}"
        assert service.put(url, _base_checkpoint(service.run_dir)).status_code == 201
        response = service.put(f"{url}/optimizer", body)
        assert response.status_code == 422, (_name, response.text)
        assert fragment in response.json()["detail"], response.json()["detail"]
    adam_like = modified_safetensors(
        base, {f"step/{next(iter(tensors(base))).partition('/')[2]}": np.array(3.0, np.float32)}
    )
    step = next(service.next_step)
    url = f"/v1/runs/{service.probed_run}/checkpoints/{step}"
    assert service.put(url, _base_checkpoint(service.run_dir)).status_code == 201
    assert service.put(f"{url}/optimizer", adam_like).status_code == 201


@settings(parent=MUTATIONS, max_examples=60)
@given(data=st.data())
def test_mutated_optimizer_states(service: Service, data: st.DataObject) -> None:
    base = _base_optimizer(service.run_dir)
    _send_optimizer(service, data.draw(_mutations(base), label="optimizer state"))


# -- mutations of any file -------------------------------------------------------------------------


def _mutations(base: bytes, *, safetensors: bool = True) -> st.SearchStrategy[bytes]:
    """Byte flips and truncations; for safetensors also a rewritten length and header rewrites."""
    flips = st.lists(
        st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ).map(lambda changes: _flip(base, changes))
    cuts = st.integers(0, len(base) - 1).map(lambda n: base[:n])
    if not safetensors:
        return st.one_of(flips, cuts)
    header_end = 8 + int.from_bytes(base[:8], "little")
    header_flips = st.lists(
        st.tuples(st.integers(0, header_end - 1), st.integers(0, 255)), min_size=1, max_size=4
    ).map(lambda changes: _flip(base, changes))
    lengths = st.integers(0, 2**64 - 1).map(lambda n: struct.pack("<Q", n) + base[8:])
    rewrites = _json_bombs().map(lambda bomb: _rewrite_header(base, bomb))
    return st.one_of(flips, header_flips, cuts, lengths, rewrites)


def _flip(base: bytes, changes: list[tuple[int, int]]) -> bytes:
    blob = bytearray(base)
    for at, value in changes:
        blob[at] = value
    return bytes(blob)


def _json_bombs() -> st.SearchStrategy[str]:
    """JSON values that broke a parser on main: deep, huge numbers, long strings, odd literals."""
    return st.one_of(
        st.integers(20, 200_000).map(_deep),
        st.integers(20, 50_000).map(lambda d: '{"a": ' * d + "1" + "}" * d),
        st.integers(21, 8000).map(lambda n: "9" * n),
        st.integers(21, 8000).map(lambda n: "-" + "1" * n + ".5e3"),
        st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1E400"]),
        st.integers(2**64, 2**200).map(str),
        st.integers(1 << 16, 3 << 20).map(lambda n: json.dumps("x" * n)),
        st.just('"\\ud800"'),
    )


def _rewrite_header(base: bytes, bomb: str) -> bytes:
    """The safetensors header with one value (or the whole metadata) replaced by ``bomb``."""
    header, data = _header_of(base)
    first = next(k for k in header if k != "__metadata__")
    text = json.dumps(header)
    target = text.replace(json.dumps(header[first]["shape"]), bomb, 1)
    return _safetensors(target, data)


# -- probe bundles ---------------------------------------------------------------------------------


def _zip(files: dict[str, bytes], *, method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _send_bundle(service: Service, body: bytes) -> None:
    service.cases["probe bundle"] += 1
    run_id = service.new_run()
    url = f"/v1/runs/{run_id}/probe"
    response = service.put(url, body)
    if response.status_code >= 400:
        assert service.client.get(url, headers=service.tenant.headers).status_code == 404
        assert service.store.list_keys(f"runs/{run_id}") == []
    else:
        _assert_loadable(body, service.run_dir)


def _assert_loadable(bundle: bytes, run_dir: Path) -> None:
    """An accepted bundle is one the workers load: the program through torch, the data too."""
    from obstacle.battery.probe import Probe

    target = run_dir.parent / f"accepted-{uuid.uuid4().hex[:8]}"
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        archive.extractall(target / PROBE_DIR)
    Probe.load(target)


def _program_entries(program: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(program)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _with_program_entry(program: bytes, suffix: str, content: bytes) -> bytes:
    entries = _program_entries(program)
    name = next(n for n in entries if n.endswith(suffix))
    return _zip({**entries, name: content})


def _bundle_with(files: dict[str, bytes], **changes: bytes) -> bytes:
    """The bundle with members replaced, its manifest re-hashed (as an attacker can)."""
    names = {"manifest": PROBE_MANIFEST, "program": PROBE_PROGRAM, "data": PROBE_DATA}
    changed = {**files, **{names[k]: v for k, v in changes.items()}}
    old_hash = json.loads(files[PROBE_MANIFEST])["content_hash"].encode()
    new_hash = hashlib.sha256(changed[PROBE_PROGRAM] + changed[PROBE_DATA]).hexdigest().encode()
    # by text, so that a manifest that is not JSON at all still goes in as it is
    changed[PROBE_MANIFEST] = changed[PROBE_MANIFEST].replace(old_hash, new_hash)
    return _zip(changed)


def _hand_made_bundles(files: dict[str, bytes]) -> list[tuple[str, bytes]]:
    program, data = files[PROBE_PROGRAM], files[PROBE_DATA]
    manifest = json.loads(files[PROBE_MANIFEST])
    model_json = json.loads(
        _program_entries(program)[
            next(n for n in _program_entries(program) if n.endswith("models/model.json"))
        ]
    )
    weights = next(n for n in _program_entries(program) if n.endswith("model_weights_config.json"))
    config = json.loads(_program_entries(program)[weights])
    fqn = next(iter(config["config"]))
    stride0 = json.loads(json.dumps(config))
    stride0["config"][fqn]["tensor_meta"]["sizes"] = [{"as_int": 2**40}]
    stride0["config"][fqn]["tensor_meta"]["strides"] = [{"as_int": 0}]
    payload = config["config"][fqn]["path_name"]
    stride0_program = _zip(
        {
            **_program_entries(program),
            weights: json.dumps(stride0).encode(),
            next(n for n in _program_entries(program) if n.endswith(f"weights/{payload}")): b"\0"
            * 8,
        }
    )
    dangling = json.loads(json.dumps(model_json))
    dangling["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"] = {
        "as_tensor": {"name": "nowhere"}
    }
    renamed = {
        **manifest,
        "parameters": [{**manifest["parameters"][0], "name": "other"}, *manifest["parameters"][1:]],
    }
    reshaped = {
        **manifest,
        "parameters": [{**manifest["parameters"][0], "shape": [1, 1]}, *manifest["parameters"][1:]],
    }
    huge = "9" * 5000
    manifest_text = json.dumps(manifest)
    cases = [
        ("empty", b""),
        ("not a zip", b"hello"),
        ("a pickle", b"\x80\x04K\x01."),
        ("truncated", pack_probe_bytes(files)[:-10]),
        ("deflated members", _zip(files, method=zipfile.ZIP_DEFLATED)),
        ("deflated bomb", _zip({**files, PROBE_DATA: b"\0" * (6 << 20)}, method=zipfile.ZIP_DEFLATED)),
        ("extra member", _zip({**files, "x": b"1"})),
        ("missing member", _zip({PROBE_MANIFEST: files[PROBE_MANIFEST], PROBE_DATA: data})),
        ("manifest deep", _bundle_with(files, manifest=_deep(100_000).encode())),
        ("manifest deep object", _bundle_with(files, manifest=manifest_text.replace('"num_batches": 4', '"num_batches": ' + _deep(3000)).encode())),
        ("manifest 5000 digits", _bundle_with(files, manifest=manifest_text.replace('"num_batches": 4', '"num_batches": ' + huge).encode())),
        ("manifest NaN", _bundle_with(files, manifest=manifest_text.replace('"num_batches": 4', '"num_batches": NaN').encode())),
        ("manifest not utf-8", _bundle_with(files, manifest=b"\xff\xfe")),
        ("manifest duplicate key", _bundle_with(files, manifest=manifest_text.replace('"num_batches": 4', '"num_batches": 4, "num_batches": 2').encode())),
        ("manifest unknown dtype", _bundle_with(files, manifest=json.dumps({**manifest, "parameters": [{**p, "dtype": "complex64"} for p in manifest["parameters"]]}).encode())),
        ("manifest negative shape", _bundle_with(files, manifest=json.dumps({**manifest, "parameters": [{**p, "shape": [-5]} for p in manifest["parameters"]]}).encode())),
        ("manifest renamed parameter", _bundle_with(files, manifest=json.dumps(renamed).encode())),
        ("manifest reshaped parameter", _bundle_with(files, manifest=json.dumps(reshaped).encode())),
        ("manifest zero batches", _bundle_with(files, manifest=json.dumps({**manifest, "num_batches": 0}).encode())),
        ("manifest hash forged", _zip({**files, PROBE_MANIFEST: json.dumps({**manifest, "content_hash": "0" * 64}).encode()})),
        ("data header 100 MiB", _bundle_with(files, data=struct.pack("<Q", 100 * 2**20) + data[8:])),
        ("data deep header", _bundle_with(files, data=_safetensors('{"x": ' + _deep(100_000) + "}"))),
        ("program deep model.json", _bundle_with(files, program=_with_program_entry(program, "models/model.json", _deep(100_000).encode()))),
        ("program 5000 digits", _bundle_with(files, program=_with_program_entry(program, "models/model.json", json.dumps(model_json).replace('"schema_version": {', '"x": ' + huge + ', "schema_version": {', 1).encode()))),
        ("program dangling value", _bundle_with(files, program=_with_program_entry(program, "models/model.json", json.dumps(dangling).encode()))),
        ("program stride-0 view", _bundle_with(files, program=stride0_program)),
        ("program deflated", _bundle_with(files, program=_zip(_program_entries(program), method=zipfile.ZIP_DEFLATED))),
        ("program truncated", _bundle_with(files, program=program[: len(program) // 2])),
        ("program not a zip", _bundle_with(files, program=b"\x80\x04K\x01.")),
    ]  # fmt: skip
    return cases


def pack_probe_bytes(files: dict[str, bytes]) -> bytes:
    return _zip(files)


def test_hand_made_malformed_bundles(service: Service) -> None:
    files = probe_files(service.run_dir)
    for _name, body in _hand_made_bundles(files):
        _send_bundle(service, body)


def _bundle_mutations(files: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    bundle = _zip(files)
    program, data = files[PROBE_PROGRAM], files[PROBE_DATA]
    whole = _mutations(bundle, safetensors=False).filter(lambda blob: blob != bundle)
    programs = st.one_of(
        st.lists(
            st.tuples(st.integers(0, len(program) - 1), st.integers(0, 255)), min_size=1, max_size=4
        ).map(lambda changes: _flip(program, changes)),
        st.integers(0, len(program) - 1).map(lambda n: program[:n]),
        _json_bombs().map(
            lambda bomb: _with_program_entry(program, "model_weights_config.json", bomb.encode())
        ),
    ).map(lambda new: _bundle_with(files, program=new))
    datas = _mutations(data).map(lambda new: _bundle_with(files, data=new))
    manifests = _json_bombs().map(
        lambda bomb: _bundle_with(
            files,
            manifest=files[PROBE_MANIFEST].replace(
                b'"num_batches": 4', b'"num_batches": ' + bomb.encode()
            ),
        )
    )
    return st.one_of(whole, programs, datas, manifests)


@settings(parent=MUTATIONS, max_examples=150)
@given(data=st.data())
def test_mutated_bundles(service: Service, data: st.DataObject) -> None:
    files = probe_files(service.run_dir)
    _send_bundle(service, data.draw(_bundle_mutations(files), label="bundle"))


# -- training logs ---------------------------------------------------------------------------------


def _send_log(service: Service, body: bytes) -> None:
    service.cases["train log"] += 1
    url = f"/v1/runs/{service.log_run}/train-log"
    response = service.put(url, body)
    key = train_log_key(uuid.UUID(service.log_run), hashlib.sha256(body).hexdigest())
    if response.status_code >= 400:
        assert key not in service.store.list_keys(f"runs/{service.log_run}/train_log")


def _hand_made_logs() -> list[bytes]:
    good = b'{"step": 1, "lr": 0.1, "loss": 2.5}\n'
    huge = b"9" * 5000
    return [
        b"",
        b"\n\n",
        b"\xff\xfe\n",
        good + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        good + b'{"step": 2, "loss": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
        b'{"step": ' + huge + b', "loss": 1}\n',
        b'{"step": 1, "loss": ' + huge + b"}\n",
        b'{"step": 1, "loss": 1, "lr": ' + huge + b"}\n",
        b'{"step": 1, "loss": 1e999}\n',
        b'{"step": 1, "loss": 1, "lr": NaN}\n',
        b'{"step": 1, "loss": 1, "lr": -Infinity}\n',
        b'{"step": 1, "step": 2, "loss": 1}\n',
        b'{"step": 1, "loss": 1, "x": "' + b"a" * (200 << 10) + b'"}\n',
        b'{"step": 1.5, "loss": 1}\n',
        b'{"step": true, "loss": 1}\n',
        b'{"step": -1, "loss": 1}\n',
        b'{"step": 1}\n',
        b'{"step": 1, "loss": "x"}\n',
        b"[1, 2]\n",
        b'"text"\n',
        b"\x00" * 100,
        good * 3 + b'{"step": 4, "loss": ' + b"-" + huge + b"}\n",
        b'{"step": 1, "loss": 1, "x": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_000 + b"}\n",
        b"{" * 1_000_000,
    ]


def test_hand_made_malformed_train_logs(service: Service) -> None:
    for body in _hand_made_logs():
        _send_log(service, body)


def _log_mutations() -> st.SearchStrategy[bytes]:
    good = b"".join(
        json.dumps({"step": i, "lr": 0.1, "loss": 2.0 - i / 10}).encode() + b"\n" for i in range(8)
    )
    line = _json_bombs().map(lambda bomb: good + b'{"step": 9, "loss": ' + bomb.encode() + b"}\n")
    key = _json_bombs().map(lambda bomb: good + b'{"step": ' + bomb.encode() + b', "loss": 1}\n')
    flips = st.lists(
        st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ).map(lambda changes: _flip(good, changes))
    noise = st.binary(min_size=1, max_size=256)
    return st.one_of(line, key, flips, noise)


@settings(parent=MUTATIONS, max_examples=150)
@given(body=_log_mutations())
def test_mutated_train_logs(service: Service, body: bytes) -> None:
    _send_log(service, body)


def test_well_formed_uploads_still_pass(service: Service) -> None:
    """The controls: the unmutated files are accepted, so the refusals above are for cause."""
    step = next(service.next_step)
    url = f"/v1/runs/{service.probed_run}/checkpoints/{step}"
    assert service.put(url, _base_checkpoint(service.run_dir)).status_code == 201
    assert service.put(f"{url}/optimizer", _base_optimizer(service.run_dir)).status_code == 201
    run_id = service.new_run()
    body = pack_probe(service.run_dir / PROBE_DIR)
    assert service.put(f"/v1/runs/{run_id}/probe", body).status_code == 201
    log = b'{"step": 1, "lr": 0.1, "loss": NaN}\n{"step": 2, "lr": 0.1, "loss": 1.5}\n'
    assert service.put(f"/v1/runs/{run_id}/train-log", log).status_code == 201
