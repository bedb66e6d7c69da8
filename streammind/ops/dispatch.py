"""The one dispatch mechanism shared by the kernel families in `streammind.ops`.

Each family (selective scan, causal conv) owns a `KernelDispatch`: it resolves an
`impl` argument ("auto" | "ref" | "kernel") to the kernel or the PyTorch reference, honours
a test override (`override_impl`, nanochat's `_override_impl` pattern), raises when "kernel"
is asked for but cannot run, and logs the chosen path once per message (transformers'
`warning_once`), as a warning when a GPU falls back to the reference.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Literal

Impl = Literal["auto", "ref", "kernel"]
IMPLS = ("auto", "ref", "kernel")


@functools.lru_cache(maxsize=None)
def _log_once(logger_name: str, level: int, message: str) -> None:
    logging.getLogger(logger_name).log(level, message)


class KernelDispatch:
    """Path selection for one kernel package.

    Args:
        package: the optional package's name, used in log messages ("mamba_ssm").
        logger_name: the logger of the family's module.
    """

    def __init__(self, package: str, logger_name: str):
        self.package = package
        self.logger_name = logger_name
        self.forced: Impl | None = None  # set only through `override_impl`

    @contextlib.contextmanager
    def override_impl(self, impl: Impl) -> Iterator[None]:
        """Force `impl` for every dispatch of this family inside the block (tests)."""
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        previous, self.forced = self.forced, impl
        try:
            yield
        finally:
            self.forced = previous

    def use_kernel(self, op: str, impl: Impl, unavailable: tuple[type[Exception], str] | None, on_cuda: bool) -> bool:
        """Resolve `impl` (after the override) to True for the kernel or False for the reference.

        `unavailable` is None when the kernel can take the inputs, else (exception type, reason).
        """
        impl = self.forced or impl
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if impl == "ref":
            _log_once(self.logger_name, logging.INFO, f"{op}: using the PyTorch reference path (requested)")
            return False
        if impl == "kernel":
            if unavailable is not None:
                error, reason = unavailable
                raise error(f"{op}(impl='kernel') cannot run: {reason}")
            _log_once(self.logger_name, logging.INFO, f"{op}: using the {self.package} kernel (requested)")
            return True
        if unavailable is None:
            _log_once(self.logger_name, logging.INFO, f"{op}: using the {self.package} kernel")
            return True
        _, reason = unavailable
        # On CPU the reference is the expected path; on a GPU it is a performance problem worth a warning.
        level = logging.WARNING if on_cuda else logging.INFO
        _log_once(self.logger_name, level, f"{op}: using the PyTorch reference path because {reason}")
        return False


__all__ = ["IMPLS", "Impl", "KernelDispatch"]
