"""Emulating the captured h200 profile reproduces the config spaces measured on the real H200.

``helion_remote/profiles/h200.reports.json`` records what the probe kernels'
spaces were on the GPU (``benchmarks/capture_target.py``).  Reduction spaces
differ between Helion versions (softmax / layer norm: 15 flat dims in 1.5.0,
16 in 1.5.1), so those are asserted only on the recorded Helion; matmul's space
is the same in 1.5.0 and 1.5.1 and is asserted everywhere.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources
from typing import Any

import pytest

from helion_remote._versions import helion_version
from helion_remote.target import emulated_probe_reports, load_profile

RECORD: dict[str, Any] = json.loads(
    resources.files("helion_remote.profiles").joinpath("h200.reports.json").read_text(encoding="utf-8")
)
RECORDED_HELION = RECORD["versions"]["helion"]


@pytest.fixture(scope="module")
def emulated() -> dict[str, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profile's helion-version-skew warning
        return emulated_probe_reports(RECORD["profile"], size=RECORD["probe_size"])


def _assert_matches_gpu(name: str, emulated: dict[str, dict[str, Any]]) -> None:
    gpu = RECORD["gpu_reports"][name]
    report = emulated[name]
    prefix = report["fingerprint"][: len(gpu["fingerprint"])]
    assert (prefix, report["flat_dims"]) == (gpu["fingerprint"], gpu["flat_dims"]), (
        f"{name}: emulated {prefix} ({report['flat_dims']} dims) != "
        f"H200 {gpu['fingerprint']} ({gpu['flat_dims']} dims)"
    )


def test_record_is_for_the_shipped_profile() -> None:
    profile = load_profile(RECORD["profile"])
    assert profile.captured
    assert profile.fingerprint == RECORD["profile_fingerprint"], "h200.json was re-captured: re-record the reports"
    assert profile.helion_version == RECORDED_HELION


@pytest.mark.parametrize("name", RECORD["helion_independent"])
def test_helion_independent_probe_matches_the_gpu(name: str, emulated: dict[str, dict[str, Any]]) -> None:
    _assert_matches_gpu(name, emulated)


@pytest.mark.parametrize("name", sorted(set(RECORD["gpu_reports"]) - set(RECORD["helion_independent"])))
def test_probe_matches_the_gpu_on_the_recorded_helion(name: str, emulated: dict[str, dict[str, Any]]) -> None:
    if helion_version() != RECORDED_HELION:
        pytest.skip(
            f"the H200 reports were recorded with helion {RECORDED_HELION}; this is helion {helion_version()}, "
            f"whose {name} space differs by design (run with helion {RECORDED_HELION} to check the profile)"
        )
    _assert_matches_gpu(name, emulated)
