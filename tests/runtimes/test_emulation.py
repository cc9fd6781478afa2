"""ARM emulation without qemu or network: index parsing, mirror detection, the verdict,
availability reasons, `edgeopt run`. The real sysroot runs in tests/e2e/test_arm_emulation.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeopt.runtimes import AdapterUnavailable, RuntimeAdapterError, TensorSpec
from edgeopt.runtimes import emulation as emu

PACKAGES = """\
Package: qemu-system-x86
Version: 1:10.0.2+ds-1
Filename: pool/main/q/qemu/qemu-system-x86_10.0.2+ds-1_amd64.deb
SHA256: 1111

Package: qemu-user
Source: qemu
Version: 1:10.0.2+ds-1
Architecture: amd64
Depends: libc6
Description: QEMU user mode emulation binaries
 QEMU is a fast processor emulator: this package provides
 the user mode emulation binaries.
Size: 74000000
Filename: pool/main/q/qemu/qemu-user_10.0.2+ds-1_amd64.deb
SHA256: 2222abcd

Package: qemu-user-binfmt
Filename: pool/main/q/qemu/qemu-user-binfmt_10.0.2+ds-1_amd64.deb
SHA256: 3333
"""


def test_index_entry_of_qemu_user():
    entry = emu.find_package(PACKAGES, "qemu-user")
    assert entry["Filename"] == "pool/main/q/qemu/qemu-user_10.0.2+ds-1_amd64.deb"
    assert entry["SHA256"] == "2222abcd"
    assert entry["Version"] == "1:10.0.2+ds-1"
    assert entry["Description"].endswith("the user mode emulation binaries.")


def test_index_without_the_package_or_its_checksum():
    with pytest.raises(emu.EmulationError, match="'qemu-user' is not in the Debian index"):
        emu.find_package(PACKAGES.replace("Package: qemu-user\n", "Package: other\n"),
                         "qemu-user")
    with pytest.raises(emu.EmulationError, match="has no SHA256"):
        emu.find_package(PACKAGES.replace("SHA256: 2222abcd\n", ""), "qemu-user")


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

ONE_LINE = """\
# deb http://commented.example.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/x.gpg] http://security.debian.org/debian-security bookworm-security main
deb http://ftp.example.net/debian bookworm main contrib
deb-src http://src.example.net/debian bookworm main
"""


@pytest.fixture
def no_mirror_env(monkeypatch):
    monkeypatch.delenv("EDGEOPT_DEBIAN_MIRROR", raising=False)


def test_mirror_from_deb822_sources(tmp_path, no_mirror_env):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert emu.debian_mirror(tmp_path) == "http://mirror.example.org/debian"


def test_mirror_from_one_line_sources_list(tmp_path, no_mirror_env):
    (tmp_path / "sources.list").write_text(ONE_LINE)
    assert emu.debian_mirror(tmp_path) == "http://ftp.example.net/debian"


def test_mirror_defaults_and_override(tmp_path, monkeypatch, no_mirror_env):
    assert emu.debian_mirror(tmp_path) == "http://deb.debian.org/debian"
    monkeypatch.setenv("EDGEOPT_DEBIAN_MIRROR", "http://local/debian/")
    assert emu.debian_mirror(tmp_path) == "http://local/debian"


def _logits(rng, rows=50):
    return (rng.standard_normal((rows, 10)) * 5).astype(np.float32)


def test_fp32_within_and_beyond_tolerance(rng):
    host = _logits(rng)
    scale = float(np.abs(host).max())
    near = (host.astype(np.float64) + 1e-5).astype(np.float32)   # float32 rounding: ~1e-5
    result = emu.compare_outputs({"logits": host}, {"logits": near}, "fp32")
    out = result["outputs"][0]
    assert result["within_tolerance"] and out["within_tolerance"]
    assert out["max_abs_diff"] == pytest.approx(1e-5, rel=0.2)
    assert out["top1_match"] == 1.0 and out["cosine"] > 0.999999
    far = host.copy()
    far[0, 0] += 1e-3 * scale          # 10x the fp32 allowance, no argmax change needed
    result = emu.compare_outputs({"logits": host}, {"logits": far}, "fp32")
    assert not result["within_tolerance"]
    assert result["tolerance"]["precision"] == "fp32"


def test_int8_allows_a_rounding_step_but_not_a_changed_prediction():
    host = np.zeros((4, 10), np.float32)
    host[:, 0], host[:, 1] = 10.0, 9.99           # scale 10: a step is 10/127 ~ 0.079
    nudged = host.copy()
    nudged[2, 5] += 10 / 127                       # one output quantization step
    result = emu.compare_outputs({"y": host}, {"y": nudged}, "int8")
    assert result["within_tolerance"], result
    assert result["outputs"][0]["allowed_abs_diff"] == pytest.approx(20 / 127)
    flipped = host.copy()
    flipped[0, 1] = 10.01                          # 0.02 off, well inside the abs allowance
    result = emu.compare_outputs({"y": host}, {"y": flipped}, "int8")
    assert result["outputs"][0]["top1_match"] == 0.75
    assert not result["within_tolerance"]
    # fp32 has no argmax rule, but 0.02 is beyond its 1e-4 * scale allowance anyway
    assert not emu.compare_outputs({"y": host}, {"y": flipped}, "fp32")["within_tolerance"]


def test_shape_mismatch_and_missing_outputs_fail(rng):
    host = {"a": _logits(rng), "b": np.zeros(3, np.float32)}
    result = emu.compare_outputs(host, {"a": host["a"][:-1]}, "fp32")
    assert not result["within_tolerance"]
    errors = {o["name"]: o["error"] for o in result["outputs"]}
    assert errors["b"] == "missing from the emulated run"
    assert errors["a"].startswith("shape [49, 10] != [50, 10]")


def test_non_finite_guest_output_fails():
    host = np.ones((2, 3), np.float32)
    guest = host.copy()
    guest[0, 0] = np.nan
    assert not emu.compare_outputs({"y": host}, {"y": guest}, "fp32")["within_tolerance"]


def test_precision_from_graph(tmp_path, tiny_onnx):
    assert emu.model_precision(tiny_onnx) == "fp32"
    int8 = tmp_path / "q.onnx"
    int8.write_bytes(tiny_onnx.read_bytes() + b"\x0aQLinearConv")
    assert emu.model_precision(int8) == "int8"


@pytest.fixture
def linux_x86(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(emu.platform, "system", lambda: "Linux")
    monkeypatch.setattr(emu.platform, "machine", lambda: "x86_64")
    tools = {"dpkg-deb": "/usr/bin/dpkg-deb", "mmdebstrap": "/usr/bin/mmdebstrap"}
    monkeypatch.setattr(emu.shutil, "which", lambda name: tools.get(name))
    return tools


def test_available_on_linux_x86_with_the_tools(linux_x86):
    assert emu.emulation_available().ok


def test_unavailable_reasons(linux_x86, monkeypatch):
    del linux_x86["mmdebstrap"]
    reason = emu.emulation_available().reason
    assert "apt-get install mmdebstrap" in reason and "\n" not in reason
    del linux_x86["dpkg-deb"]
    assert "dpkg-deb is missing" in emu.emulation_available().reason
    monkeypatch.setattr(emu.platform, "machine", lambda: "aarch64")
    assert "run the ARM adapters natively" in emu.emulation_available().reason
    monkeypatch.setattr(emu.platform, "system", lambda: "Darwin")
    assert "Linux hosts only" in emu.emulation_available().reason


def test_a_cached_sysroot_needs_no_mmdebstrap(linux_x86):
    del linux_x86["mmdebstrap"]
    meta = emu.sysroot_dir() / emu.META
    meta.mkdir(parents=True)
    (meta / "build.json").write_text("{}")
    (meta / "qemu-aarch64").write_bytes(b"")
    assert emu.emulation_available().ok


def test_build_refuses_with_the_reason(linux_x86):
    del linux_x86["mmdebstrap"]
    with pytest.raises(AdapterUnavailable, match="apt-get install mmdebstrap"):
        emu.build_sysroot()
    assert issubclass(emu.EmulationError, RuntimeAdapterError)


def test_guest_environment_is_the_sysroot_s_own(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/host/site")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/host/lib")
    env = emu.guest_env("cortex-a76")
    assert env["PYTHONPATH"] == "/opt/site" and "LD_LIBRARY_PATH" not in env
    assert env["PYTHONSAFEPATH"] == "1"     # a checkout as cwd must not shadow the wheel
    assert env["QEMU_CPU"] == "cortex-a76"
    assert env["EDGEOPT_EMULATED"] == "qemu-aarch64:cortex-a76"
    command = emu.guest_command(tmp_path, "-m", "edgeopt")
    assert command == [str(tmp_path / emu.META / "qemu-aarch64"), "-L", str(tmp_path), "-0",
                       str(tmp_path / "usr/bin/python3.11-qemu"),
                       str(tmp_path / "usr/bin/python3.11"), "-m", "edgeopt"]


def test_emulate_reports_the_guest_s_last_error_line(monkeypatch, tmp_path, tiny_onnx):
    monkeypatch.setattr(emu, "build_sysroot", lambda progress=None: tmp_path)
    failed = subprocess.CompletedProcess([], 1, "", "Traceback...\n  File x\nImportError: boom\n")
    monkeypatch.setattr(emu, "run_guest", lambda *a, **k: failed)
    feeds = {"input": np.zeros((1, 3, 8, 8), np.float32)}
    with pytest.raises(emu.EmulationError) as info:
        emu.emulate(tiny_onnx, feeds, "cortex-a76")
    assert str(info.value) == "tiny.onnx failed under qemu-aarch64 (cortex-a76): ImportError: boom"


class _FakeLoaded:
    def __init__(self, batch):
        self.inputs = (TensorSpec("x", "float32", (batch, 2)),)
        self.calls = 0

    def run(self, feeds):
        self.calls += 1
        return [feeds["x"] * 2, feeds["x"].sum(1)]


def test_batch1_model_runs_sample_by_sample():
    loaded = _FakeLoaded(1)
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    doubled, sums = emu.run_in_chunks(loaded, {"x": x})
    assert loaded.calls == 5
    np.testing.assert_array_equal(doubled, x * 2)
    np.testing.assert_array_equal(sums, x.sum(1))
    dynamic = _FakeLoaded("N")
    emu.run_in_chunks(dynamic, {"x": x})
    assert dynamic.calls == 1


def test_edgeopt_source_hash_follows_the_code(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    before = emu.tree_hash(tmp_path)
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("")
    assert emu.tree_hash(tmp_path) == before
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert emu.tree_hash(tmp_path) != before


def test_run_saves_outputs_by_name(run_cli, tiny_onnx, tmp_path, rng):
    import onnxruntime as ort

    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)   # 3 samples, batch-1 model
    np.savez(tmp_path / "in.npz", input=x)
    result = run_cli("run", tiny_onnx, "--inputs", tmp_path / "in.npz",
                     "--out", tmp_path / "out.npz")
    assert result.code == 0, result.err
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(3)])
    with np.load(tmp_path / "out.npz") as out:
        assert out.files == ["logits"]
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz", "tiny.onnx"]


def test_run_bad_inputs_are_one_line_usage_errors(run_cli, tiny_onnx, tmp_path):
    np.savez(tmp_path / "wrong.npz", image=np.zeros((1, 3, 8, 8), np.float32))
    np.save(tmp_path / "single.npy", np.zeros(3))
    cases = {
        (tmp_path / "missing.npz", tmp_path / "o.npz"): "does not exist",
        (tmp_path / "wrong.npz", tmp_path / "o.npz"): "missing input, unknown image",
        (tmp_path / "single.npy", tmp_path / "o.npz"): "not a single array",
        (tmp_path / "wrong.npz", tmp_path / "o.txt"): "must be a .npz file",
    }
    for (inputs, out), text in cases.items():
        result = run_cli("run", tiny_onnx, "--inputs", inputs, "--out", out)
        assert result.code == 2, (text, result.err)
        assert text in result.err and result.err.count("\n") == 1, result.err
    assert not (tmp_path / "o.npz").exists()


def test_runtime_only_imports():
    code = ("import sys, edgeopt.runtimes.emulation, edgeopt._run_cli; "
            "bad = {'torch', 'onnx', 'nncf', 'rich', 'openvino'} & set(sys.modules); "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_build_command_line_is_runnable(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path))
    assert emu.main(["where"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "arm64-sysroot")
    monkeypatch.setattr(emu, "emulation_available",
                        lambda: emu.Availability(False, "mmdebstrap is missing"))
    assert emu.main(["build"]) == 2
    assert "mmdebstrap is missing" in capsys.readouterr().err
