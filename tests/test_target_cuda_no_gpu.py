"""A CUDA build of torch on a coordinator that sees no GPU (``CUDA_VISIBLE_DEVICES=""``).

Lowering a reduction (softmax's amax, layer norm's mean) asks Inductor for
``DeviceProperties.create(cuda:0)`` (torch 2.11: ``Reduction.num_splits``),
which reads ``CudaInterface.get_device_properties``, a copy of
``torch.cuda.get_device_properties`` bound when the class was defined.  Unpatched,
that initializes CUDA: "No CUDA GPUs are available".  A CPU build, or torch
>= 2.13 with unbacked sizes, never gets there, so the query path is also checked
directly, on any build.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from helion_remote.target import emulate_target, load_profile, patches, probe_kernels, space_report, stand_in_args
from helion_remote.kernel_copy import private_kernel


def _class_points() -> dict[str, object]:
    return {f"{p.target}.{p.attribute}": patches.current(p) for p in patches.PATCH_POINTS if p.owner}


@pytest.mark.filterwarnings("ignore:target profile")
def test_inductor_device_properties_answer_from_the_profile() -> None:
    from torch._dynamo.device_interface import CudaInterface, get_interface_for_device
    from torch._inductor.runtime.hints import DeviceProperties

    profile = load_profile("h200")
    before = _class_points()
    cache_before = DeviceProperties.create.cache_info().currsize
    with emulate_target(profile) as emulation:
        assert "torch._dynamo.device_interface.CudaInterface.get_device_properties" in emulation.patched
        assert "torch._inductor.runtime.hints.DeviceProperties.create" in emulation.patched
        interface = get_interface_for_device(torch.device("cuda:0"))
        assert interface.get_device_properties(torch.device("cuda:0")).multi_processor_count == profile.num_sms
        assert CudaInterface().get_device_properties(0).name == profile.device_name  # staticmethod kept
        props = DeviceProperties.create(torch.device("cuda", 0))
        major, minor = profile.compute_capability
        assert (props.type, props.multi_processor_count, props.cc, props.major) == (
            "cuda", profile.num_sms, major * 10 + minor, major,
        )
        assert props.warp_size == profile.warp_size
        assert props.regs_per_multiprocessor == profile.regs_per_multiprocessor
    after = _class_points()
    assert all(after[name] is before[name] for name in before), "class attributes not restored"
    assert isinstance(after["torch._inductor.runtime.hints.DeviceProperties.create"], classmethod)
    assert isinstance(after["torch._dynamo.device_interface.CudaInterface.get_device_properties"], staticmethod)
    assert DeviceProperties.create.cache_info().currsize == cache_before, "emulated properties left cached"


@pytest.mark.skipif(
    torch.version.cuda is None or torch.cuda.is_available(),
    reason="needs a CUDA build of torch that sees no GPU (e.g. CUDA_VISIBLE_DEVICES='')",
)
@pytest.mark.parametrize("name", ["softmax", "layer_norm"])
def test_reduction_binds_under_emulation_on_a_cuda_build_without_gpu(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profile's helion-version-skew warning
        with emulate_target("h200"):
            kernel = private_kernel(getattr(probe_kernels, name), None)
            bound = kernel.bind(stand_in_args(probe_kernels.probe_args(name, "meta", probe_kernels.DEFAULT_SIZE)))
            report = space_report(bound)
    assert report["flat_dims"] > 0
    assert not torch.cuda.is_available()
