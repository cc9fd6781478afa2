"""digits-cnn FP32 and INT8 on an emulated Cortex-A76 (qemu-aarch64 10, bookworm arm64
sysroot): outputs match this machine's, and the sysroot's edgeopt is runtime-only.

The first run builds the sysroot into $EDGEOPT_CACHE_DIR (or ~/.cache/edgeopt): about a
minute and ~250 MB; later runs reuse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.runtimes import emulation as emu

pytestmark = pytest.mark.slow
CPU = "cortex-a76"
SAMPLES = 64            # real test-split digits; the exported model is batch-1, run one by one


@pytest.fixture(scope="module")
def sysroot() -> Path:
    availability = emu.emulation_available()
    if not availability.ok:
        if os.environ.get("EDGEOPT_REQUIRE_EMULATION"):      # CI: never skipped silently
            pytest.fail(f"ARM emulation unavailable: {availability.reason}")
        pytest.skip(f"ARM emulation unavailable: {availability.reason}")
    return emu.build_sysroot()


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("digits") / "out"
    done = subprocess.run(
        [sys.executable, "-m", "edgeopt", "optimize", "ref:digits-cnn", "--runtime", "onnxruntime",
         "--out", str(out), "--quiet", "--bench-repeats", "1", "--bench-seconds", "0",
         "--bench-iterations", "3", "--warmup", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return {"fp32": out / "digits-cnn.fp32.onnx", "int8": out / "digits-cnn.int8-ort.onnx"}


@pytest.fixture(scope="module")
def digits_feeds() -> dict[str, np.ndarray]:
    from edgeopt.reference_models import get_reference

    samples = get_reference("digits-cnn").evaluation_set(SAMPLES).inputs
    return {"input": np.concatenate([s["input"] for s in samples])}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_digits_cnn_matches_on_emulated_cortex_a76(sysroot, digits_models, digits_feeds,
                                                    precision):
    result = emu.emulate(digits_models[precision], digits_feeds, CPU)
    json.dumps(result)                                    # JSON-able as promised
    assert result["label"] == "emulated" and result["qemu_cpu"] == CPU
    assert result["qemu_version"].split(".")[0] == "10"
    assert result["precision"] == precision
    assert not any("ms" in key or "latency" in key for key in result), result
    (logits,) = result["outputs"]
    assert logits["name"] == "logits"
    assert logits["top1_match"] == 1.0, logits
    assert result["within_tolerance"], result
    assert logits["cosine"] > 0.9999


def _guest(sysroot: Path, *args: str) -> subprocess.CompletedProcess:
    return emu.run_guest(sysroot, CPU, *args, timeout=900)


def test_sysroot_is_runtime_only(sysroot):
    for module in ("torch", "onnx", "rich", "nncf"):
        done = _guest(sysroot, "-c", f"import {module}")
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, (module, done)
    done = _guest(sysroot, "-c", "import platform, onnxruntime, numpy, yaml; "
                                 "print(platform.machine())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "aarch64"


def test_devices_and_bench_run_inside(sysroot, digits_models):
    done = _guest(sysroot, "-m", "edgeopt", "devices", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert "host-cpu" in {d["id"] for d in json.loads(done.stdout)}

    done = _guest(sysroot, "-m", "edgeopt", "bench", str(digits_models["int8"]),
                  "--device", "host-cpu", "--runtime", "onnxruntime", "--bench-iterations", "3",
                  "--bench-seconds", "0", "--bench-repeats", "1", "--warmup", "1", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results and results[0]["runtime"] == "onnxruntime"
    # Timed under qemu: labelled so, never passed off as a measured figure.
    assert results[0]["bench"]["label"] == "emulated"
    assert results[0]["bench"]["setup"]["emulated_by"] == f"qemu-aarch64:{CPU}"


def test_bench_emulate_checks_an_arm_device_and_never_measures_it(sysroot, digits_models):
    """`edgeopt bench --device rpi5 --emulate` on x86: outputs checked under qemu with the
    profile's core; the latency is an estimate, never a measured or emulated timing."""
    done = subprocess.run(
        [sys.executable, "-m", "edgeopt", "bench", str(digits_models["int8"]), "--device",
         "rpi5", "--runtime", "onnxruntime", "--emulate", "--json", "--quiet"],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["adapter"] == "ort-arm"
    assert row["bench"]["label"] in {"estimated", "unavailable"}
    emulation = row["emulation"]
    assert emulation["label"] == "emulated"
    assert emulation["qemu_cpu"] == "cortex-a76"
    assert emulation["within_tolerance"] is True
    assert not any(key.endswith("_ms") for key in emulation)
