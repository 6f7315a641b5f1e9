"""Target emulation on a CPU coordinator: the target's space, restored afterwards, drift caught."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import helion
from helion_remote.target import (
    CaptureError,
    EmulationError,
    ProfileError,
    TargetDriftError,
    TargetProfile,
    builtin_names,
    capture_profile,
    check_drift,
    config_space_report,
    emulate_target,
    emulated_probe_reports,
    load_profile,
    space_report,
    stand_in_args,
)
from helion_remote.target import patches, probe_kernels
from helion_remote.kernel_copy import private_kernel
from helion_remote.target.validate import probe_source_module

REPO = Path(__file__).resolve().parent.parent
SIZE = probe_kernels.DEFAULT_SIZE  # the GPU shapes: stand-ins cost no memory


def _emulated_bind(name: str, profile: Any = "h100", size: int = SIZE) -> Any:
    kernel = private_kernel(getattr(probe_kernels, name), None)
    return kernel.bind(stand_in_args(probe_kernels.probe_args(name, "meta", size)))


def _cpu_report(name: str, size: int = 256) -> dict[str, Any]:
    kernel = private_kernel(getattr(probe_kernels, name), None)
    return space_report(kernel.bind(probe_kernels.probe_args(name, "cpu", size)))


def _bindings() -> dict[str, int]:
    """id() of every patched attribute and of every alias of it: what must come back."""
    out = {}
    for point in patches.PATCH_POINTS:
        stored = patches.current(point)  # the descriptor itself: a bound classmethod is new on every read
        out[f"{point.target}.{point.attribute}"] = id(stored)
        if point.owner:
            continue
        for alias_module, attribute in patches.loaded_aliases(stored, skip=set()):
            out[f"{alias_module.__name__}.{attribute}"] = id(stored)
    return out


@pytest.fixture(scope="module")
def h100_reports() -> dict[str, dict[str, Any]]:
    return emulated_probe_reports("h100")


# ------------------------------------------------------------------------- profiles


def test_builtin_profiles_load_and_round_trip() -> None:
    assert {"a100", "b200", "h100", "h200"} <= set(builtin_names())
    for name in builtin_names():
        profile = load_profile(name)
        assert profile.name == name and profile.source
        again = TargetProfile.from_json(profile.to_json())
        assert again == profile and again.fingerprint == profile.fingerprint
    assert load_profile("h100").compute_capability == (9, 0)
    assert load_profile("h200").captured and not load_profile("h100").captured  # h200: measured on the GPU
    assert load_profile("h100").num_sms == load_profile("h200").num_sms == 132
    assert load_profile("b200").compute_capability == (10, 0)


def test_load_profile_errors_name_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="built-in targets: a100, b200, h100, h200"):
        load_profile("h300")
    edited = json.loads(load_profile("h100").to_json())
    edited["num_sms"] = 100
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(edited))
    with pytest.raises(ProfileError, match="was edited"):
        load_profile(path)
    del edited["fingerprint"]
    path.write_text(json.dumps(edited))
    assert load_profile(str(path)).num_sms == 100


def test_fingerprint_ignores_metadata_only() -> None:
    profile = load_profile("h100")
    renamed = dataclasses.replace(profile, name="mine", source="x", captured=True)
    assert renamed.fingerprint == profile.fingerprint
    assert dataclasses.replace(profile, num_sms=114).fingerprint != profile.fingerprint


def test_capture_needs_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(CaptureError, match="needs a CUDA"):
        capture_profile()


def test_capture_reads_back_what_emulation_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """capture(emulate(p)) == p: capture and emulation read each fact through the same Helion call."""
    import contextlib

    profile = load_profile("h100")
    with emulate_target(profile):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device", lambda _device: contextlib.nullcontext())
        captured = capture_profile("cuda:0")
    assert captured.captured and captured.name == "h100"
    ours, theirs = profile.identity(), captured.identity()
    differing = {key for key in ours if ours[key] != theirs[key]}
    assert differing <= {"torch_version", "torch_cuda_version", "helion_version"}, differing


# ------------------------------------------------------------------------- emulation


def test_stand_in_args_keep_layout_and_pass_scalars() -> None:
    base = torch.randn(8, 16, dtype=torch.float16)
    view = base[2:, 1:].t()
    fake_view, scalar, fake_base = stand_in_args([view, 3.5, base])
    assert type(fake_view).__name__ == "FakeTensor" and fake_view.device == torch.device("cuda:0")
    assert fake_view.shape == view.shape and fake_view.stride() == view.stride()
    assert fake_view.storage_offset() == view.storage_offset() and fake_view.dtype == torch.float16
    assert scalar == 3.5 and fake_base.shape == base.shape


def test_h100_spaces_have_the_gpu_knobs(h100_reports: dict[str, dict[str, Any]]) -> None:
    matmul = h100_reports["matmul"]
    assert matmul["flat_dims"] == 22  # the notes' figure: 12 (CPU, no triton) / 20 (CPU + triton) / 22 (H100)
    for name, report in h100_reports.items():
        fields, facts = report["fields"], report["facts"]
        assert facts["device_type"] == "cuda" and facts["target_device_capability"] == [9, 0]
        assert facts["num_sm"] == 132, name
        assert "tensor_descriptor" in fields["indexing"], name
        assert "block_ptr" not in fields["indexing"], name  # sm90 + triton 3.6 offers descriptors instead
        assert "maxnreg" in fields and "host_tensor_descriptors" in fields, name
        for knob in ("range_num_stages", "range_multi_buffers", "range_flattens", "range_unroll_factors"):
            assert fields[knob] != "[]", (name, knob)
        assert fields["range_warp_specializes"] == "[]", name  # warp specialization needs sm100
    assert matmul["facts"]["compiler_default_config"] is not None  # the sm90 matmul heuristic fired
    for name in ("softmax", "layer_norm"):
        assert h100_reports[name]["flat_dims"] >= 15  # 15 on helion 1.5.0, 16 on 1.5.1 (reduction_fusion)


def test_b200_adds_warp_specialization() -> None:
    with emulate_target("b200"):
        report = space_report(_emulated_bind("matmul", size=1024))
    assert report["facts"]["target_device_capability"] == [10, 0] and report["facts"]["num_sm"] == 148
    assert report["fields"]["range_warp_specializes"] != "[]"


def test_generated_code_uses_descriptors_maxnreg_and_range_knobs() -> None:
    common = dict(
        block_sizes=[64, 64, 64],
        indexing=["tensor_descriptor"] * 3,
        pid_type="persistent_blocked",
        maxnreg=128,
        range_num_stages=[0, 3],
        range_multi_buffers=[None, False],
        range_flattens=[None, False],
        num_warps=4,
        num_stages=3,
    )
    with emulate_target("h100"):
        bound = _emulated_bind("matmul", size=1024)
        device_side = bound.to_triton_code(helion.Config(**common, host_tensor_descriptors=False))
        host_side = bound.to_triton_code(helion.Config(**common, host_tensor_descriptors=True))
    assert "tl.make_tensor_descriptor" in device_side
    assert "_helion_tensor_descriptor(x," in host_side
    for code in (device_side, host_side):
        assert "maxnreg=128" in code
        assert "disallow_acc_multi_buffer=True, flatten=False)" in code  # tl.range knobs
    assert "_BLOCK_SIZE_2, num_stages=3, disallow_acc_multi_buffer=True" in host_side


def test_everything_is_restored_after_the_context() -> None:
    before_ids = _bindings()
    cpu_before = _cpu_report("matmul")
    torch_get_props = torch.cuda.get_device_properties
    with emulate_target("h100") as emulation:
        assert _bindings() != before_ids
        assert "helion._compat._supports_tensor_descriptor" in emulation.patched
        assert "helion.runtime.triton.launcher.get_num_xcd" in emulation.patched  # found as an alias
        emulated = space_report(_emulated_bind("matmul", size=256))
    assert _bindings() == before_ids
    assert torch.cuda.get_device_properties is torch_get_props
    cpu_after = _cpu_report("matmul")
    assert cpu_after["fingerprint"] == cpu_before["fingerprint"] != emulated["fingerprint"]
    assert cpu_after["flat_dims"] == cpu_before["flat_dims"] < emulated["flat_dims"] == 22
    assert cpu_after["facts"]["num_sm"] == 1 and cpu_after["facts"]["target_device_capability"] is None
    from helion import _compat

    assert _compat.supports_tensor_descriptor() is False and _compat.target_device_capability() is None


def test_one_target_per_process() -> None:
    with emulate_target("h100"):
        with emulate_target(load_profile("h100")):  # same profile: fine
            pass
        with pytest.raises(EmulationError, match="already emulating"):
            with emulate_target("a100"):
                pass


def test_warns_when_the_profile_was_captured_with_another_helion() -> None:
    skewed = dataclasses.replace(load_profile("h100"), helion_version="1.4.0")
    with pytest.warns(UserWarning, match="captured with helion 1.4.0"):
        with emulate_target(skewed):
            pass


def test_min_dot_size_falls_back_by_bit_width() -> None:
    from helion import _compat

    profile = load_profile("h100")
    trimmed = dataclasses.replace(profile, min_dot_sizes={"float16,float16": (1, 1, 16)})
    with emulate_target(trimmed):
        assert _compat.min_dot_size(torch.device("cuda:0"), torch.bfloat16, torch.bfloat16) == (1, 1, 16)
        with pytest.raises(EmulationError, match="no minimum dot size"):
            _compat.min_dot_size(torch.device("cuda:0"), torch.int8, torch.int8)


def test_patch_points_exist_and_copied_functions_are_current() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patches.verify_patch_points()


def test_a_vanished_helion_name_fails_naming_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    from helion_remote.coordinator._helion_compat import HelionCompatError
    from helion_remote._versions import helion_version

    import helion.language.loops

    monkeypatch.delattr(helion.language.loops, "_add_config_range_choice")
    with pytest.raises(HelionCompatError, match=f"helion {helion_version()} lacks helion.language.loops"):
        patches.verify_patch_points()


def test_a_vanished_name_that_emulation_only_reads_fails_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from helion_remote.coordinator._helion_compat import HelionCompatError

    import helion.language.loops

    assert "helion.language.loops.RangeFlattenSpec" in patches.ALSO_READ
    monkeypatch.delattr(helion.language.loops, "RangeFlattenSpec")
    with pytest.raises(HelionCompatError, match="helion.language.loops.RangeFlattenSpec"):
        patches.verify_patch_points()


# ------------------------------------------------------------------------- no triton


NO_TRITON_SCRIPT = textwrap.dedent(
    """
    import json
    try:
        import triton  # noqa: F401
        has_triton = True
    except ImportError:
        has_triton = False
    from helion_remote.target import emulated_probe_reports, space_report
    from helion_remote.target import probe_kernels
    from helion_remote.kernel_copy import private_kernel
    reports = emulated_probe_reports("h100")
    cpu = space_report(private_kernel(probe_kernels.matmul, None).bind(probe_kernels.probe_args("matmul", "cpu", 256)))
    print("@@" + json.dumps({"has_triton": has_triton, "cpu_dims": cpu["flat_dims"],
                             "reports": {k: [v["fingerprint"], v["flat_dims"]] for k, v in reports.items()}}))
    """
)


def test_same_fingerprints_without_triton_on_the_coordinator(
    tmp_path: Path, h100_reports: dict[str, dict[str, Any]]
) -> None:
    blocker = tmp_path / "triton"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('triton is blocked for this test')\n")
    path = os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", NO_TRITON_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("@@", 1)[1])
    assert result["has_triton"] is False
    assert result["cpu_dims"] == 12  # what a triton-less laptop would search un-emulated
    assert _cpu_report("matmul")["flat_dims"] == 20  # ... and one with triton
    for name, (fingerprint, dims) in result["reports"].items():
        assert fingerprint == h100_reports[name]["fingerprint"], name
        assert dims == h100_reports[name]["flat_dims"], name


# ------------------------------------------------------------------------- drift guard


def test_wrong_capability_is_caught_with_both_fingerprints_and_fields(
    h100_reports: dict[str, dict[str, Any]],
) -> None:
    wrong = dataclasses.replace(load_profile("h100"), name="h100-as-sm80", compute_capability=(8, 0))
    with emulate_target(wrong):
        coordinator = space_report(_emulated_bind("matmul"))
    worker = h100_reports["matmul"]  # what a (9, 0) worker reports
    check_drift(worker, worker)  # same space: silent
    with pytest.raises(TargetDriftError) as caught:
        check_drift(coordinator, worker)
    error = caught.value
    assert error.coordinator_fingerprint == coordinator["fingerprint"]
    assert error.worker_fingerprint == worker["fingerprint"]
    message = str(error)
    assert coordinator["fingerprint"] in message and worker["fingerprint"] in message
    assert "facts.target_device_capability" in error.differing_fields
    assert "coordinator=[8, 0] worker=[9, 0]" in message
    assert "re-capture the profile" in message and "target=" in message


def test_wrong_target_names_differing_fields(h100_reports: dict[str, dict[str, Any]]) -> None:
    a100 = emulated_probe_reports("a100", kernels=["matmul"])["matmul"]
    with pytest.raises(TargetDriftError) as caught:
        check_drift(a100, h100_reports["matmul"])
    fields = caught.value.differing_fields
    assert {"indexing", "host_tensor_descriptors", "facts.num_sm", "facts.target_device_capability"} <= set(fields)


def test_config_space_report_loads_shipped_source(tmp_path: Path, h100_reports: dict[str, dict[str, Any]]) -> None:
    """The worker path: a shipped module, a private bind of the (here: stand-in) device args."""
    module = probe_source_module()
    with emulate_target("h100"):
        report = config_space_report(
            module, "matmul", stand_in_args(probe_kernels.probe_args("matmul", "meta")), work_dir=tmp_path
        )
        again = config_space_report(
            module, "matmul", stand_in_args(probe_kernels.probe_args("matmul", "meta")), work_dir=tmp_path
        )
    assert report["fingerprint"] == again["fingerprint"] == h100_reports["matmul"]["fingerprint"]
    assert Path(sys.modules[module.name].__file__).read_text() == module.source  # loaded from a real file


def test_a_shipped_copy_generates_the_originals_code_byte_for_byte(tmp_path: Path) -> None:
    """Helion writes the defining file's base name into generated code; the shipped copy keeps it,
    so a codegen process that cannot import the original still matches the coordinator's digest."""
    from helion_remote.coordinator.codegen import kernel_source
    from helion_remote.protocol import SourceModule
    from helion_remote.target.space import load_private_kernel

    shipped = SourceModule("hr_shipped_pkg.probe_kernels", probe_source_module().source)  # not importable
    args = probe_kernels.probe_args("matmul", "cpu", 64)
    try:
        copy = load_private_kernel(shipped, "matmul", None, tmp_path).bind(args)
        assert Path(sys.modules[shipped.name].__file__).name == "probe_kernels.py"
        original = private_kernel(probe_kernels.matmul, None).bind(args)
        config = original.config_spec.default_config()
        assert kernel_source(copy, config).module_source == kernel_source(original, config).module_source
    finally:
        sys.modules.pop(shipped.name, None)
        sys.modules.pop("hr_shipped_pkg", None)


# ------------------------------------------------------------------------- capture script


def test_capture_target_dry_run(tmp_path: Path) -> None:
    out, reports = tmp_path / "h200.json", tmp_path / "reports.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "capture_target.py"), "--dry-run", "--out", str(out),
         "--reports-out", str(reports), "--kernels", "matmul,softmax", "--size", "1024"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("MATCH") == 2 and "MISMATCH" not in proc.stdout
    assert load_profile(out).fingerprint == load_profile("h200").fingerprint
    payload = json.loads(reports.read_text())
    assert payload["dry_run"] is True and set(payload["gpu_reports"]) == {"matmul", "softmax"}
    (comparison,) = payload["comparisons"].values()
    assert comparison["match"] is True
    emulated = comparison["emulated_reports"]["matmul"]
    assert emulated["cuda_available_in_coordinator"] is False and emulated["flat_dims"] == 22
