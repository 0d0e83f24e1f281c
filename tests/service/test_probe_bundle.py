"""The probe bundle (obstacle.artifacts.bundle): packing, and what unpacking refuses."""

from __future__ import annotations

import io
import json
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from obstacle.artifacts.bundle import nonfinite_tensors, pack_probe, unpack_probe_bundle
from obstacle.artifacts.layout import PROBE_DATA, PROBE_DIR, PROBE_MANIFEST, PROBE_PROGRAM
from obstacle.artifacts.safetensors_header import read_header
from obstacle.errors import ProbeError
from service.bundles import probe_files, rehash, zip_bundle


def test_pack_is_deterministic_and_unpacks_to_the_same_files(
    tiny_run: Path, tmp_path: Path
) -> None:
    as_bytes = pack_probe(tiny_run / PROBE_DIR)
    as_file = pack_probe(tiny_run / PROBE_DIR, tmp_path / "probe.zip")
    assert as_file.read_bytes() == as_bytes
    bundle = unpack_probe_bundle(as_file, tmp_path / "out")
    assert bundle.manifest.num_batches == 4
    assert bundle.content_hash == bundle.manifest.content_hash
    assert bundle.program.node_count > 0
    for name, data in probe_files(tiny_run).items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_pack_needs_a_probe_directory(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="missing"):
        pack_probe(tmp_path)


def _zip(tmp_path: Path, members: list[tuple[zipfile.ZipInfo, bytes]]) -> Path:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            archive.writestr(info, data)
    return path


def _members(tiny_run: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    return [(zipfile.ZipInfo(name), data) for name, data in probe_files(tiny_run).items()]


def test_a_symlink_member_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    members = _members(tiny_run)
    members[0][0].external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(ProbeError, match="not a regular file"):
        unpack_probe_bundle(_zip(tmp_path, members), tmp_path / "out")


def test_duplicate_members_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    members = _members(tiny_run)
    members.append((zipfile.ZipInfo(PROBE_MANIFEST), b"{}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        path = _zip(tmp_path, members)
    with pytest.raises(ProbeError, match="exactly"):
        unpack_probe_bundle(path, tmp_path / "out")


def test_a_zip_bomb_is_refused_before_extraction(tiny_run: Path, tmp_path: Path) -> None:
    members = [(i, d) for i, d in _members(tiny_run) if i.filename != PROBE_DATA]
    members.append((zipfile.ZipInfo(PROBE_DATA), b"\x00" * 5_000_000))
    for info, _ in members:
        info.compress_type = zipfile.ZIP_DEFLATED
    path = _zip(tmp_path, members)
    assert path.stat().st_size < 100_000
    with pytest.raises(ProbeError, match="compressed"):
        unpack_probe_bundle(path, tmp_path / "out")
    assert not (tmp_path / "out" / PROBE_DATA).exists()


def test_an_encrypted_member_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    path = _zip(tmp_path, _members(tiny_run))
    raw = bytearray(path.read_bytes())
    # set the "encrypted" flag bit in every central directory record
    at = raw.find(b"PK\x01\x02")
    while at != -1:
        flags = struct.unpack_from("<H", raw, at + 8)[0]
        struct.pack_into("<H", raw, at + 8, flags | 0x1)
        at = raw.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(raw))
    with pytest.raises(ProbeError, match="encrypted"):
        unpack_probe_bundle(path, tmp_path / "out")


def test_a_forged_manifest_hash_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    files = probe_files(tiny_run)
    manifest = json.loads(files[PROBE_MANIFEST])
    manifest["content_hash"] = "0" * 64
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in {**files, PROBE_MANIFEST: json.dumps(manifest).encode()}.items():
            archive.writestr(name, data)
    (tmp_path / "b.zip").write_bytes(buffer.getvalue())
    with pytest.raises(ProbeError, match="content_hash"):
        unpack_probe_bundle(tmp_path / "b.zip", tmp_path / "out")
    assert PROBE_PROGRAM  # the program is not even looked at


def _rehashed_zip(tmp_path: Path, files: dict[str, bytes]) -> Path:
    path = tmp_path / "bundle.zip"
    path.write_bytes(zip_bundle(rehash(files)))
    return path


def test_a_deflated_member_within_the_limit_is_refused_unexpanded(
    tiny_run: Path, tmp_path: Path
) -> None:
    # On main a member deflated from 1 GiB to 1 MiB was written to disk before the 422 when the
    # service's limit allowed it: now only stored members are read, whatever the limit.
    members = [(i, d) for i, d in _members(tiny_run) if i.filename != PROBE_DATA]
    members.append((zipfile.ZipInfo(PROBE_DATA), b"\x00" * 2_000_000))
    members[-1][0].compress_type = zipfile.ZIP_DEFLATED
    path = _zip(tmp_path, members)
    with pytest.raises(ProbeError, match=r"data.safetensors is compressed \(zip method 8"):
        unpack_probe_bundle(path, tmp_path / "out", max_bytes=1 << 30)
    assert not (tmp_path / "out").exists()


def test_the_zip_directory_is_bounded_before_it_is_read(tiny_run: Path, tmp_path: Path) -> None:
    raw = bytearray(pack_probe(tiny_run / PROBE_DIR))
    at = raw.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", raw, at + 8, 60_000, 60_000)  # members on this disk, in total
    path = tmp_path / "many.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(ProbeError, match="declares 60000 members"):
        unpack_probe_bundle(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_manifest_must_name_the_programs_parameters(tiny_run: Path, tmp_path: Path) -> None:
    # Accepted on main; the worker then bound checkpoints to parameters the program lacks.
    files = probe_files(tiny_run)
    manifest = json.loads(files[PROBE_MANIFEST])
    manifest["parameters"][0]["name"] = "renamed"
    path = _rehashed_zip(tmp_path, {**files, PROBE_MANIFEST: json.dumps(manifest).encode()})
    with pytest.raises(ProbeError, match=r"only in the manifest: \['renamed'\]"):
        unpack_probe_bundle(path, tmp_path / "out")
    manifest = json.loads(files[PROBE_MANIFEST])
    manifest["parameters"][0]["shape"] = [3, 3]
    path = _rehashed_zip(tmp_path, {**files, PROBE_MANIFEST: json.dumps(manifest).encode()})
    with pytest.raises(ProbeError, match=r"shapes manifest vs program: \['0.weight: \[3, 3\]"):
        unpack_probe_bundle(path, tmp_path / "out2")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"num_batches": 0}, "num_batches is 0"),
        ({"inputs": [{"index": 1, "shape": [-1, 4], "dtype": "float64"}]}, "indices must be 0, 1"),
        ({"inputs": [{"index": 0, "shape": [16, 4], "dtype": "float64"}]}, "is not [-1, sizes"),
        ({"buffers": [{"name": "b", "shape": [1], "dtype": "complex64"}]}, "'complex64'"),
    ],
)
def test_the_manifest_is_what_capture_writes(
    tiny_run: Path, tmp_path: Path, change: dict[str, object], fragment: str
) -> None:
    files = probe_files(tiny_run)
    manifest = {**json.loads(files[PROBE_MANIFEST]), **change}
    path = _rehashed_zip(tmp_path, {**files, PROBE_MANIFEST: json.dumps(manifest).encode()})
    with pytest.raises(ProbeError) as caught:
        unpack_probe_bundle(path, tmp_path / "out")
    assert fragment in str(caught.value), str(caught.value)


def test_a_deeply_nested_manifest_is_a_probe_error(tiny_run: Path, tmp_path: Path) -> None:
    files = probe_files(tiny_run)
    deep = b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = tmp_path / "deep.zip"
    path.write_bytes(zip_bundle({**files, PROBE_MANIFEST: deep}))  # read before any hash
    with pytest.raises(ProbeError, match="nesting depth 100001 is over the limit of 8"):
        unpack_probe_bundle(path, tmp_path / "out")


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """A safetensors file from raw arrays and dtype codes (numpy has no bfloat16)."""
    header: dict[str, object] = {}
    offset = 0
    for name, (code, array) in tensors.items():
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(
        struct.pack("<Q", len(text)) + text + b"".join(a.tobytes() for _, a in tensors.values())
    )


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16"])
def test_nonfinite_tensors_are_found_in_every_float_dtype(dtype: str, tmp_path: Path) -> None:
    finite = np.linspace(-3, 3, 300_001)  # over one 1 MiB read chunk in float64
    bad = finite.copy()
    bad[299_999] = np.inf  # near the end: after a chunk boundary
    if dtype == "BF16":  # bfloat16's bits are the top half of float32's
        encode = lambda a: (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # noqa: E731
    else:
        numpy_dtype = {"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype]
        encode = lambda a: a.astype(numpy_dtype)  # noqa: E731
    path = tmp_path / "t.safetensors"
    _write_safetensors(
        path,
        {
            "ok": (dtype, encode(finite)),
            "bad": (dtype, encode(bad)),
            "ints": ("I64", np.arange(10)),
        },
    )
    assert nonfinite_tensors(path, read_header(path)) == ["bad"]
