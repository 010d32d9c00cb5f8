"""fwedge.bundle: manifest contents, atomic writes, and refusal of tampered bundles."""
from __future__ import annotations

import json
import os
import shutil

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
    from fwedge.bundle import seal_manifest

    manifest_path.write_text(json.dumps(seal_manifest(manifest)))
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


# -- the manifest's own content ------------------------------------------------------------------


def _edit_manifest(bundle_dir, edit, reseal=False):
    from fwedge.bundle import seal_manifest

    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest = edit(manifest)
    if reseal:
        manifest = seal_manifest(manifest)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m: {**m, "preprocess": {"layout": "NHWC"}}, id="preprocess"),
    pytest.param(lambda m: {**m, "inputs": [{**m["inputs"][0], "dtype": "uint8"}]}, id="input-dtype"),
    pytest.param(lambda m: {**m, "outputs": [{**m["outputs"][0], "scale": 0.5}]}, id="output-scale"),
    pytest.param(lambda m: {**m, "precision": "fp32"}, id="precision"),
])
def test_an_edited_manifest_is_refused(tmp_path, edit):
    _write(tmp_path / "b")
    load_bundle(tmp_path / "b")
    _edit_manifest(tmp_path / "b", edit)
    with pytest.raises(ExportError, match="does not match its manifest_sha256"):
        load_bundle(tmp_path / "b")


def test_a_manifest_without_its_digest_is_refused(tmp_path):
    _write(tmp_path / "b")
    _edit_manifest(tmp_path / "b", lambda m: {k: v for k, v in m.items() if k != "manifest_sha256"})
    with pytest.raises(ExportError, match=r"missing \['manifest_sha256'\]"):
        load_bundle(tmp_path / "b")


def test_the_digest_is_of_the_canonical_manifest(tmp_path):
    import hashlib

    _write(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert manifest["manifest_sha256"] == hashlib.sha256(canonical).hexdigest()
    # Whitespace and key order do not matter; only content does.
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest, indent=None))
    assert load_bundle(tmp_path / "b").manifest_sha256 == manifest["manifest_sha256"]


def test_an_unlisted_file_is_refused(tmp_path):
    _write(tmp_path / "b")
    (tmp_path / "b" / "sub" / "extra.so").write_bytes(b"\x7fELF")
    with pytest.raises(ExportError, match=r"'sub/extra\.so' is not listed in the manifest"):
        load_bundle(tmp_path / "b")


def test_a_symlink_in_the_bundle_is_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"weights" * 100)
    _write(tmp_path / "b")
    target = tmp_path / "b" / "model.bin"
    target.unlink()
    target.symlink_to(outside)  # same bytes, so only the symlink itself can give it away
    with pytest.raises(ExportError, match="'model.bin' (is a symlink|points outside the bundle)"):
        load_bundle(tmp_path / "b")


def test_a_symlinked_folder_pointing_outside_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.param").write_text("7767517\n")
    _write(tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "sub")
    (tmp_path / "b" / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ExportError, match="outside the bundle|symlink"):
        load_bundle(tmp_path / "b")


MALFORMED = {
    "files-as-list": lambda m: {**m, "files": list(m["files"])},
    "top-level-list": lambda m: [m],
    "nul-in-path": lambda m: {**m, "files": {"model.bin\x00.txt": "0" * 64}},
    "absolute-path": lambda m: {**m, "files": {"/etc/passwd": "0" * 64}},
    "dot-dot": lambda m: {**m, "files": {"sub/../../x": "0" * 64}},
    "newline-in-path": lambda m: {**m, "files": {"a\nb": "0" * 64}},
    "files-null": lambda m: {**m, "files": None},
    "hash-not-hex": lambda m: {**m, "files": {"model.bin": 5}},
    "inputs-dict": lambda m: {**m, "inputs": {"name": "x"}},
    "input-string": lambda m: {**m, "inputs": ["input"]},
    "shape-string": lambda m: {**m, "inputs": [{**m["inputs"][0], "shape": "1,1,28,28"}]},
    "shape-float": lambda m: {**m, "inputs": [{**m["inputs"][0], "shape": [1.5, 1]}]},
    "shape-bool": lambda m: {**m, "inputs": [{**m["inputs"][0], "shape": [True]}]},
    "shape-huge": lambda m: {**m, "inputs": [{**m["inputs"][0], "shape": [2**70]}]},
    "dtype-object": lambda m: {**m, "inputs": [{**m["inputs"][0], "dtype": "object"}]},
    "dtype-int": lambda m: {**m, "inputs": [{**m["inputs"][0], "dtype": 3}]},
    "name-int": lambda m: {**m, "inputs": [{**m["inputs"][0], "name": 3}]},
    "name-nul": lambda m: {**m, "inputs": [{**m["inputs"][0], "name": "in\x00put"}]},
    "layout-bad": lambda m: {**m, "inputs": [{**m["inputs"][0], "layout": "HWC"}]},
    "scale-string": lambda m: {**m, "outputs": [{**m["outputs"][0], "scale": "0.1"}]},
    "scale-negative": lambda m: {**m, "outputs": [{**m["outputs"][0], "scale": -1.0}]},
    "zero-point-float": lambda m: {**m, "outputs": [{**m["outputs"][0], "zero_point": 0.5}]},
    "unknown-tensor-key": lambda m: {**m, "outputs": [{**m["outputs"][0], "evil": 1}]},
    "target-list": lambda m: {**m, "target": ["onnx"]},
    "target-path": lambda m: {**m, "target": "../x"},
    "arch-null": lambda m: {**m, "arch": None},
    "precision-int": lambda m: {**m, "precision": 8},
    "source-sha-int": lambda m: {**m, "source_sha256": 0},
    "preprocess-list": lambda m: {**m, "preprocess": ["NCHW"]},
    "preprocess-bad-resize": lambda m: {**m, "preprocess": {"resize": "big"}},
    "preprocess-unknown": lambda m: {**m, "preprocess": {"evil": 1}},
    "sizes-string": lambda m: {**m, "sizes": "big"},
    "extra-list": lambda m: {**m, "extra": []},
    "versions-int": lambda m: {**m, "versions": 1},
    "unknown-top-key": lambda m: {**m, "run_this": "rm -rf /"},
    "no-target": lambda m: {k: v for k, v in m.items() if k != "target"},
    "schema-list": lambda m: {**m, "schema": ["fwedge.bundle/1"]},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_manifest_is_one_export_error(tmp_path, name):
    """Each malformed field, even with a recomputed digest, is one ExportError line."""
    _write(tmp_path / "b")
    edit = MALFORMED[name]
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = edit(json.loads(manifest_path.read_text()))
    if isinstance(manifest, dict):
        from fwedge.bundle import seal_manifest

        manifest = seal_manifest(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ExportError) as caught:
        load_bundle(tmp_path / "b")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", [b"", b"{", b"\xff\xfe", b"[" * 100000, b'{"a": NaN}', b'{"a": 1, "a": 2}'])
def test_a_manifest_that_is_not_json_is_one_export_error(tmp_path, text):
    _write(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_bytes(text)
    with pytest.raises(ExportError):
        load_bundle(tmp_path / "b")


# -- partial folders of killed writers -------------------------------------------------------------

_SLOW_WRITER = r'''
import sys, time
from pathlib import Path
from fwedge.bundle import write_bundle

def files(folder):
    (folder / "model.bin").write_bytes(b"x" * 1_000_000)
    print("writing", flush=True)
    time.sleep(300)

write_bundle(Path(sys.argv[1]), target="onnx", arch="x86_64", precision="fp32", source_sha256="",
             inputs=[], outputs=[], write_files=files)
'''


def _start_writer(out_dir):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(out_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    return child


def _partials(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_a_killed_export_is_cleaned_up_by_the_next_write_and_a_live_one_is_not(tmp_path):
    import signal

    running = _start_writer(tmp_path / "c")
    try:
        [live] = _partials(tmp_path)
        killed = _start_writer(tmp_path / "a")
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert len(_partials(tmp_path)) == 2
        _write(tmp_path / "b")
        assert _partials(tmp_path) == [live], "the killed writer's partial goes, the running writer's stays"
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["b"]
    finally:
        running.kill()
        running.wait()
    _write(tmp_path / "b")
    assert _partials(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "no lock file or partial is left"


def test_a_write_killed_mid_swap_gets_the_previous_bundle_back(tmp_path):
    """Killed between moving the old bundle aside and moving the new one in: the old bundle
    sits in `.a.XXXX.old` with a free lock; the next write puts it back."""
    _write(tmp_path / "a", payload=b"old")
    lock = tmp_path / ".a.k1ll3d00.lock"
    lock.write_text("a")
    os.rename(tmp_path / "a", tmp_path / ".a.k1ll3d00.old")
    (tmp_path / ".a.k1ll3d00.partial").mkdir()
    _write(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert load_bundle(tmp_path / "a").files and (tmp_path / "a" / "model.bin").read_bytes() == b"old"


def test_the_cleaner_leaves_files_it_did_not_make_alone(tmp_path):
    (tmp_path / ".editor.lock").write_text("mine")
    (tmp_path / ".notes.partial").mkdir()
    (tmp_path / ".b.abcdefgh.lock").write_text("someone else's lock")
    _write(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.abcdefgh.lock", ".editor.lock", ".notes.partial", "b"]


def test_runner_cache_rebuilds_for_an_edited_manifest_at_the_same_path(tmp_path):
    """A resealed manifest edit (same path, same files) must not reuse the runtime built from the old manifest."""
    import dataclasses

    from fwedge.bundle import Bundle
    from fwedge.targets.common import RunnerCache

    built = []
    cache = RunnerCache(lambda bundle: built.append(bundle.manifest_sha256) or len(built))
    first = Bundle(path=tmp_path, target="onnx", arch="x86_64", precision="int8", source_sha256="0" * 64,
                   inputs=[], outputs=[], files={"model.onnx": "1" * 64}, manifest_sha256="a" * 64)
    assert cache.get(first) == cache.get(first) == 1
    assert cache.get(dataclasses.replace(first, manifest_sha256="b" * 64)) == 2
