"""What ``--backend`` / ``--precision`` refuse, by field name with exit status 2, before any weights load
(engine/backends, issue 20). No conversion runs here; tests that need the openvino package skip without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.backends import Backend, choose_backend, cpu_has_native_bf16

runner = CliRunner()


def generate(tmp_path: Path, *arguments: str, model: str = "tiny-shapes"):
    return runner.invoke(app, ["generate", "a red circle", "--model", model, "--steps", "1", *arguments,
                               "-o", str(tmp_path / "out")])


def assert_refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr if hasattr(result, "stderr") else result.output
    assert message.startswith("error: ") and message.count("\n") == 1, message  # one line, no traceback
    for word in words:
        assert word in message, message


def test_unknown_backend_and_precision_name_their_field(tmp_path: Path) -> None:
    assert_refused(generate(tmp_path, "--backend", "onnx"), "backend:", "torch, openvino")
    assert_refused(generate(tmp_path, "--precision", "fp8"), "precision:", "f32, bf16")
    assert_refused(generate(tmp_path, "--precision", "bf16"), "precision:", "--backend openvino")
    assert not (tmp_path / "out").exists()


def test_without_the_extra_the_error_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what Python does when the package is not installed
    assert_refused(generate(tmp_path, "--backend", "openvino"), "backend:", "difflab[openvino]",
                   "scripts/setup.sh openvino")


def test_bf16_needs_native_bf16(tmp_path: Path) -> None:
    flags = "flags\t\t: fpu sse avx2 avx512f"
    plain, native = tmp_path / "plain", tmp_path / "native"
    plain.write_text(f"processor\t: 0\n{flags}\n")
    native.write_text(f"processor\t: 0\n{flags} avx512_bf16\n")
    assert not cpu_has_native_bf16.__wrapped__(plain) and cpu_has_native_bf16.__wrapped__(native)
    assert not cpu_has_native_bf16.__wrapped__(tmp_path / "absent")
    pytest.importorskip("openvino")
    if cpu_has_native_bf16():
        assert choose_backend("openvino", "bf16") == Backend("openvino", "bf16")
    else:
        assert_refused(generate(tmp_path, "--backend", "openvino", "--precision", "bf16"), "precision:",
                       "avx512_bf16")


def test_flux_and_sd3_are_refused_by_name(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from .family_fixtures import save_family_pipeline

    for family in ("flux", "sd3"):
        folder = save_family_pipeline(family, tmp_path_factory.mktemp(f"openvino-{family}"))
        assert_refused(generate(tmp_path, "--backend", "openvino", model=str(folder)), "model:", family,
                       "--backend torch")


def test_controlnet_and_memory_knobs_are_refused_by_name(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from PIL import Image

    edges = tmp_path / "edges.png"
    Image.new("RGB", (64, 64)).save(edges)
    assert_refused(generate(tmp_path, "--backend", "openvino", "--control", f"none:{edges}"), "controls:",
                   "ControlNet")
    assert_refused(generate(tmp_path, "--backend", "openvino", "--memory", "vae_slicing"), "memory:")


def test_serve_config_checks_the_backend(tmp_path: Path) -> None:
    from difflab.serve.config import ServeConfig

    with pytest.raises(ValueError, match="^backend: must be one of torch, openvino"):
        ServeConfig(data_dir=tmp_path, backend="onnx")
    with pytest.raises(ValueError, match="^precision:"):
        ServeConfig(data_dir=tmp_path, precision="bf16")
