"""Run a tuned config under the Triton interpreter and compare with eager PyTorch.

Used by test_e2e_local.py in a subprocess: TRITON_INTERPRET must be set before
triton is first imported, which the pytest process has already done.
    python tests/interpreter_check.py <kernel-name> <config-json>
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

import helion  # noqa: E402
from helion_remote.worker.interpreter_libdevice import install_interpreter_libdevice  # noqa: E402
from helion_remote.worker.interpreter import install_interpreter_num_sm  # noqa: E402

import kernels  # noqa: E402


def main() -> None:
    name, config_json = sys.argv[1], sys.argv[2]
    install_interpreter_libdevice()
    install_interpreter_num_sm()
    config = helion.Config.from_json(config_json)
    kernel = getattr(kernels, name)
    tuned = helion.kernel(kernel.fn, config=config, static_shapes=True)
    args = kernels.ARGS[name]()
    expected_args = [a.clone() for a in args]
    expected = kernels.EAGER[name](*expected_args)
    got = tuned(*args)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    for after, want in zip(args, expected_args):
        torch.testing.assert_close(after, want, atol=1e-3, rtol=1e-3)
    print("MATCH", name)


if __name__ == "__main__":
    main()
