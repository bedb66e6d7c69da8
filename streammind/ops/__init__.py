"""Sequence-mixing ops with a plain-PyTorch reference beside each optional fast kernel.

One module per kernel family, each with a single dispatch point (`impl="auto" | "ref" | "kernel"`)
and its own `override_impl` context manager for tests:

    selective_scan.py  the Mamba-1 selective scan (optional kernels: mamba_ssm)
    causal_conv1d.py   the depthwise causal conv (optional kernel: causal_conv1d)

The functions re-exported here shadow the submodules of the same name as attributes of this
package, so reach module-level items (flags, `override_impl`) with
`from streammind.ops.selective_scan import override_impl` rather than attribute access.
"""

from .causal_conv1d import (
    HAS_CAUSAL_CONV1D_KERNELS,
    causal_conv1d,
    causal_conv1d_final_state,
    causal_conv1d_ref,
    causal_conv1d_update,
)
from .selective_scan import (
    HAS_MAMBA_KERNELS,
    selective_scan,
    selective_scan_ref,
    selective_scan_sequential,
    selective_state_update,
)

__all__ = [
    "HAS_CAUSAL_CONV1D_KERNELS",
    "HAS_MAMBA_KERNELS",
    "causal_conv1d",
    "causal_conv1d_final_state",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_sequential",
    "selective_state_update",
]
