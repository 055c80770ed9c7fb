"""CrypTen 0.4.1 on torch 2.x: every incompatibility we know of, fixed explicitly.

Each fix is a ``Patch`` (``install()`` / ``uninstall()``); ``install_all()`` runs once, when
``crypten_mpcache`` is imported. CrypTen itself cannot be imported before the first fix, so
this is the one module of ours that imports crypten inside its hooks. The list (see
``shared/design/stack.md``):

* ``onnx_registration_stub``: crypten imports ``torch.onnx._internal.registration``,
  removed from torch 2.x. It is unused by what we run, so a stub module satisfies it.
* ``torch_function_classmethod``: ``CrypTensor.__torch_function__`` is a plain method;
  torch 2.x warns (soon errors) on ``torch.cat``/``torch.stack`` of CrypTensors. Rebinding
  it as a classmethod keeps CrypTen's dispatch and silences the deprecation.
* ``load_weights_only``: torch >= 2.6 loads with ``weights_only=True`` by default, which
  cannot unpickle CrypTen's shares. ``crypten.load``/``load_from_party`` default to a
  closure with ``weights_only=False``. Only load files that your own parties wrote.
* ``run_multiprocess_drain``: CrypTen's launcher joins children before draining the result
  queue (hangs on results over the pipe size) and ships tensors by fd-sharing (fails once
  the child exits). The replacement sends results as picklable numpy, drains while it
  joins, and fails loudly when a party fails instead of returning None.
* ``exact_decode``: ``FixedPointEncoder.decode`` divides negative values by ``scale - 1``
  and decodes ``-k + r/scale`` (``1 <= r < k``) as one less than it is. Only revealed
  values are affected (never the protocol), but ``--check`` logit errors read ~1.0 and
  comparisons with plaintext flake. The fix: floor division and the exact remainder.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
import warnings
from collections.abc import Callable

import torch

from crypten_mpcache.patches import Patch

_ONNX_REGISTRATION = "torch.onnx._internal.registration"



def _stub_onnx_registration() -> Callable[[], None]:
    if _ONNX_REGISTRATION in sys.modules:
        return lambda: None
    try:
        importlib.import_module(_ONNX_REGISTRATION)
        return lambda: None
    except ImportError:
        pass
    stub = types.ModuleType(_ONNX_REGISTRATION)
    stub.registry = None  # crypten only imports the name
    stub.__doc__ = "Stub installed by crypten_mpcache: removed torch internal."
    sys.modules[_ONNX_REGISTRATION] = stub

    def undo() -> None:
        if sys.modules.get(_ONNX_REGISTRATION) is stub:
            del sys.modules[_ONNX_REGISTRATION]

    return undo


def _import_crypten_quietly() -> types.ModuleType:
    """Import crypten with its import-time deprecation noise suppressed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import crypten

    return crypten


def _classmethod_torch_function() -> Callable[[], None]:
    from crypten.cryptensor import CrypTensor

    original = CrypTensor.__dict__["__torch_function__"]
    if isinstance(original, classmethod):
        return lambda: None
    func = original

    @functools.wraps(func)
    def dispatch(cls, torch_func, types_, args=(), kwargs=None):
        return func(None, torch_func, types_, args, kwargs)

    CrypTensor.__torch_function__ = classmethod(dispatch)

    def undo() -> None:
        CrypTensor.__torch_function__ = original

    return undo


def trusted_torch_load(f, **kwargs):
    """``torch.load`` for files written by this project's own parties (full unpickling)."""
    kwargs.setdefault("weights_only", False)
    return torch.load(f, **kwargs)


def _load_weights_only() -> Callable[[], None]:
    import crypten

    originals = {"load": crypten.load, "load_from_party": crypten.load_from_party}

    @functools.wraps(originals["load"])
    def load(f, load_closure=trusted_torch_load, **kwargs):
        return originals["load"](f, load_closure=load_closure, **kwargs)

    @functools.wraps(originals["load_from_party"])
    def load_from_party(f=None, preloaded=None, encrypted=False, model_class=None,
                        src=0, load_closure=trusted_torch_load, **kwargs):
        return originals["load_from_party"](
            f, preloaded=preloaded, encrypted=encrypted, model_class=model_class,
            src=src, load_closure=load_closure, **kwargs)

    load.__crypten_mpcache_patch__ = load_from_party.__crypten_mpcache_patch__ = \
        "load_weights_only"
    crypten.load, crypten.load_from_party = load, load_from_party

    def undo() -> None:
        crypten.load = originals["load"]
        crypten.load_from_party = originals["load_from_party"]

    return undo


def _drain_run_multiprocess() -> Callable[[], None]:
    import crypten.mpc
    import crypten.mpc.context as context

    # The launcher imports crypten (through our protocols) at module level: it can only
    # load once the stub above is in place, so it is imported when the hook runs.
    from crypten_mpcache.runtime.launcher import crypten_compatible_run_multiprocess

    original = context.run_multiprocess
    context.run_multiprocess = crypten_compatible_run_multiprocess
    crypten.mpc.run_multiprocess = crypten_compatible_run_multiprocess

    def undo() -> None:
        context.run_multiprocess = original
        crypten.mpc.run_multiprocess = original

    return undo


def _exact_decode() -> Callable[[], None]:
    from crypten.encoder import FixedPointEncoder

    original = FixedPointEncoder.decode

    @functools.wraps(original)
    def decode(self, tensor):
        if tensor is None or self._scale <= 1:
            return original(self, tensor)
        quotient = tensor.div(self._scale, rounding_mode="floor")
        remainder = tensor - quotient * self._scale
        exact = quotient.to(torch.float64) + remainder.to(torch.float64) / self._scale
        return exact.to(torch.float32).data

    FixedPointEncoder.decode = decode

    def undo() -> None:
        FixedPointEncoder.decode = original

    return undo


PATCHES: list[Patch] = [
    Patch("onnx_registration_stub", "stub for a removed torch.onnx internal",
          _stub_onnx_registration),
    Patch("torch_function_classmethod", "CrypTensor.__torch_function__ as classmethod",
          _classmethod_torch_function),
    Patch("load_weights_only", "crypten.load with weights_only=False", _load_weights_only),
    Patch("run_multiprocess_drain", "run_multiprocess that drains, then joins",
          _drain_run_multiprocess),
    Patch("exact_decode", "FixedPointEncoder.decode exact for negative values",
          _exact_decode),
]


def get(name: str) -> Patch:
    for patch in PATCHES:
        if patch.name == name:
            return patch
    raise KeyError(f"no CrypTen patch named {name!r}; known: {[p.name for p in PATCHES]}")


def install_all() -> None:
    """Install every CrypTen fix (idempotent). Imports crypten without warning noise."""
    get("onnx_registration_stub").install()
    _import_crypten_quietly()
    for patch in PATCHES:
        patch.install()
