"""fwedge.bundle: manifest contents, atomic writes, and refusal of tampered bundles."""
from __future__ import annotations

import json
import os

import pytest

from fwedge.bundle import BUNDLE_SCHEMA, TensorInfo, load_bundle, write_bundle
from fwedge.errors import ExportError


def _write(out, payload=b"weights" * 100, fail=False):
    def files(tmp):
        (tmp / "model.bin").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "model.param").write_text("7767517\n")
        if fail:
            raise RuntimeError("killed midway (simulated)")
        return {"rom_bytes": 123}

    return write_bundle(out, target="ncnn", arch="x86_64", precision="int8", source_sha256="ab" * 32,
                        inputs=[TensorInfo("input", [1, 1, 28, 28], "float32", "NCHW")],
                        outputs=[TensorInfo("logits", [1, 10], "float32")],
                        write_files=files, preprocess={"layout": "NCHW"}, toolchain={"ncnn": "1.0"})


def test_manifest_lists_files_with_hashes(tmp_path):
    bundle = _write(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["schema"] == BUNDLE_SCHEMA
    assert set(manifest["files"]) == {"model.bin", "sub/model.param"}
    assert manifest["sizes"]["file_bytes"] == 700 + 8 and manifest["sizes"]["rom_bytes"] == 123
    assert manifest["versions"]["ncnn"] == "1.0" and "fwedge" in manifest["versions"]
    loaded = load_bundle(tmp_path / "b")
    assert loaded.inputs == bundle.inputs and loaded.precision == "int8"


def test_flipped_byte_is_refused(tmp_path):
    _write(tmp_path / "b")
    path = tmp_path / "b" / "model.bin"
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"'model\.bin' does not match the manifest"):
        load_bundle(tmp_path / "b")


def test_missing_file_is_refused(tmp_path):
    _write(tmp_path / "b")
    os.unlink(tmp_path / "b" / "sub" / "model.param")
    with pytest.raises(ExportError, match=r"'sub/model\.param'.*missing"):
        load_bundle(tmp_path / "b")


def test_manifest_path_escape_is_refused(tmp_path):
    _write(tmp_path / "b")
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="outside the bundle"):
        load_bundle(tmp_path / "b")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        _write(tmp_path / "b", fail=True)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_previous_bundle(tmp_path):
    _write(tmp_path / "b", payload=b"old")
    with pytest.raises(RuntimeError):
        _write(tmp_path / "b", payload=b"new", fail=True)
    assert (tmp_path / "b" / "model.bin").read_bytes() == b"old"
    load_bundle(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_not_a_bundle(tmp_path):
    with pytest.raises(ExportError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_writer_gets_an_absolute_folder_for_a_relative_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []

    def files(tmp):
        seen.append(tmp)
        (tmp / "a.txt").write_text("a")

    write_bundle("rel/b", target="c", arch="x86_64", precision="fp32", source_sha256="0" * 64,
                 inputs=[], outputs=[], write_files=files)
    assert seen[0].is_absolute()
    assert load_bundle("rel/b").files.keys() == {"a.txt"}


def test_bundle_folder_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        _write(tmp_path / "b")
    finally:
        os.umask(old)
    assert ((tmp_path / "b").stat().st_mode & 0o777) == 0o755
