"""Fuzz every route of /openapi.json over HTTP against a real ``obstacle serve`` (issue 13).

Each case is drawn from the route's own schema (path, query, header and body values that fit it)
or deliberately off it (other types, out-of-range numbers, junk bytes, missing or foreign tokens,
ids of runs that do and do not exist). Every answer must be below 500, arrive in time, and every
4xx must be an ``application/problem+json`` with a non-empty ``detail``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest_services import Tenant, make_settings, make_tenant, upload_run
from service.live import serving

CASES_PER_OPERATION = 45
CASE_TIMEOUT_S = 20.0

LIMITS = {"OBSTACLE_MAX_REQUEST_BYTES": "65536", "OBSTACLE_MAX_TRAIN_LOG_BYTES": "65536"}


@pytest.fixture(scope="module")
def live(
    sqlite_database_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_run: Path,
) -> Iterator[tuple[str, Tenant, Tenant, list[str]]]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    settings_ = make_settings(sqlite_database_url, redis_url, data_dir)
    with serving(settings_, data_dir, **LIMITS) as (base, _):
        tenant = make_tenant(sqlite_database_url, "fuzz")
        stranger = make_tenant(sqlite_database_url, "stranger")
        with httpx.Client(base_url=base, timeout=60) as client:
            full = upload_run(client, tiny_run, tenant.headers)
            empty = client.post("/v1/runs", json={"name": "empty"}, headers=tenant.headers)
            analysis = client.post(f"/v1/runs/{full}/analyses", json={}, headers=tenant.headers)
        assert analysis.status_code == 202, analysis.text
        yield base, tenant, stranger, [full, empty.json()["id"], analysis.json()["id"]]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
HOSTILE_JSON = {
    "deep": b'{"a":' * 5000,
    "digits": b"[" + b"1" * 5000 + b"]",
    "long-string": b'{"name": "' + b"x" * 60000 + b'"}',
    "duplicate-keys": b'{"name": "a", "name": "b"}',
    "nan": b'{"name": "a", "target_loss": NaN}',
}


def _hostile(name: str) -> bytes:
    return HOSTILE_JSON[name]


# Path segments that are not what the schema wants: they must give 404/422, not 500.
ODD_SEGMENTS = st.sampled_from(
    ["0", "-1", "1e400", "null", "%00", "..", "a" * 300, "ünïcode", "10000000000000000000000"]
)


def from_schema(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that fit ``schema`` (the subset of JSON Schema the service's OpenAPI uses)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(components["schemas"][name], components))
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "string":
        if schema.get("format") == "uuid":
            return st.uuids().map(str)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 50))
    if kind == "array":
        items = from_schema(schema.get("items", {}), components)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=5)
    if kind == "object":
        properties = {
            name: from_schema(sub, components) for name, sub in schema.get("properties", {}).items()
        }
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in properties.items() if k in required},
            optional={k: v for k, v in properties.items() if k not in required},
        )
    return JSON  # no type: anything


def _value(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    on_schema = from_schema(schema, components)
    return st.one_of(on_schema, on_schema, JSON)


def _case(
    path: str, method: str, op: dict[str, Any], components: dict[str, Any], ids: list[str]
) -> st.SearchStrategy[dict[str, Any]]:
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for param in op.get("parameters", []):
        name, where, schema = param["name"], param["in"], param["schema"]
        if where == "path":
            if schema.get("format") == "uuid":
                known = st.sampled_from(ids) if method != "delete" else st.nothing()
                parts[f"path:{name}"] = known | st.uuids().map(str) | ODD_SEGMENTS
            else:
                parts[f"path:{name}"] = from_schema(schema, components).map(str) | ODD_SEGMENTS
        elif where == "query":
            parts[f"query:{name}"] = st.none() | _value(schema, components).map(json.dumps)
    body: st.SearchStrategy[tuple[str | None, bytes]] = st.just((None, b""))
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        schema = content["application/json"]["schema"]
        body = st.tuples(
            st.sampled_from(["application/json", "application/json", "text/plain", None]),
            st.one_of(
                _value(schema, components).map(lambda v: json.dumps(v).encode()),
                st.binary(max_size=200),
                st.sampled_from(sorted(HOSTILE_JSON)).map(_hostile),
            ),
        )
    elif content:
        media = next(iter(content))
        body = st.tuples(st.just(media), st.binary(max_size=4096))
    auth = st.sampled_from(["token", "token", "token", "stranger", "unknown", "none", "basic"])
    sha = st.sampled_from(["right", "right", "trailing", "trailing-wrong", "wrong", "junk", "none"])
    return st.fixed_dictionaries({**parts, "body": body, "auth": auth, "sha": sha})


def _request(base: str, path: str, method: str, case: dict[str, Any]) -> httpx.Request:
    url = path
    params = {}
    for key, value in case.items():
        if key.startswith("path:"):
            url = url.replace("{" + key[5:] + "}", quote(str(value), safe=""))
        elif key.startswith("query:") and value is not None:
            params[key[6:]] = value
    media, body = case["body"]
    headers: dict[str, str] = {}
    if media is not None:
        headers["Content-Type"] = media
    headers["X-Content-SHA256"] = {
        "right": hashlib.sha256(body).hexdigest(),
        "trailing": "trailing",
        "trailing-wrong": "trailing",
        "wrong": "0" * 64,
        "junk": "not-a-sha",
        "none": "",
    }[case["sha"]]
    if case["sha"] == "none":
        del headers["X-Content-SHA256"]
    if case["sha"] == "trailing":  # the body ends with its own digest
        body += hashlib.sha256(body).hexdigest().encode()
    elif case["sha"] == "trailing-wrong":
        body += body[-64:]
    return httpx.Request(method.upper(), base + url, params=params, content=body, headers=headers)


def _fuzz_operation(
    client: httpx.Client,
    base: str,
    tokens: dict[str, dict[str, str]],
    path: str,
    method: str,
    op: dict[str, Any],
    components: dict[str, Any],
    ids: list[str],
) -> list[tuple[int, float]]:
    """Run the operation's cases; (status, seconds) of each."""
    answers: list[tuple[int, float]] = []

    @settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_case(path, method, op, components, ids))
    def one(case: dict[str, Any]) -> None:
        request = _request(base, path, method, case)
        request.headers.update(tokens[case["auth"]])
        begun = time.monotonic()
        try:
            response = client.send(request)
        except httpx.TransportError as exc:
            sent = {k: v for k, v in request.headers.items() if k != "authorization"}
            raise AssertionError(
                f"{request.method} {request.url} ({case['auth']} token, headers {sent}, "
                f"{len(request.content)} body bytes): no answer, {exc!r}"
            ) from exc
        answers.append((response.status_code, time.monotonic() - begun))
        where = f"{request.method} {request.url} → {response.status_code}"
        assert response.status_code < 500, f"{where}: {response.text[:500]}"
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json", where
            detail = response.json().get("detail")
            assert isinstance(detail, str) and detail.strip(), where

    one()
    return answers


def test_no_route_answers_500_and_every_4xx_is_a_problem(
    live: tuple[str, Tenant, Tenant, list[str]],
) -> None:
    base, tenant, stranger, ids = live
    tokens = {
        "token": tenant.headers,
        "stranger": stranger.headers,
        "unknown": {"Authorization": "Bearer obst_unknown"},
        "none": {},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
    }
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    components = spec.get("components", {})
    seen: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    slowest = 0.0
    started = time.monotonic()
    with httpx.Client(timeout=CASE_TIMEOUT_S) as client:
        for path, operations in spec["paths"].items():
            for method, op in operations.items():
                answers = _fuzz_operation(client, base, tokens, path, method, op, components, ids)
                seen[f"{method.upper()} {path}"] += len(answers)
                statuses.update(status for status, _ in answers)
                slowest = max([slowest, *(seconds for _, seconds in answers)])
    elapsed = time.monotonic() - started
    total = sum(seen.values())
    print(f"{total} cases in {elapsed:.1f} s, slowest {slowest:.2f} s; statuses {dict(statuses)}")
    assert set(seen) == {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}
    assert min(seen.values()) >= CASES_PER_OPERATION // 2, seen
    assert total >= 700
    assert uuid.UUID(ids[0])
