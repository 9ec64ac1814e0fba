"""Makes `azureml.core` importable for v1 entry scripts when no real `azureml-core` is installed.

`install_azureml_core_fallback()` appends a finder to the END of `sys.meta_path`: Python asks it only after every
other finder failed, so a real `azureml-core` (or any other package providing `azureml.core`) always wins, and an
`azureml` namespace of other Azure packages (`azureml.dataprep`, `azureml.fsspec`, ...) keeps working beside it.
It serves `azureml.core`, `azureml.core.model` and `azureml.core.run` from `airflow_parallel_run.azure.azureml_core`
(`Model`, `Run`); other `azureml.core` names raise an ImportError that says why. The entry-script process installs
it the way it installs the `azureml_user.parallel_run` shim, when `importlib.util.find_spec("azureml.core")` finds
nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

from . import azureml_core

#: module -> the names it exports
_MODULES: dict[str, tuple[str, ...]] = {
    "azureml.core": ("Model", "Run"),
    "azureml.core.model": ("Model", "ModelNotFoundException"),
    "azureml.core.run": ("Run",),
    "azureml.exceptions": ("WebserviceException", "ModelNotFoundException"),
}
_PACKAGES = ("azureml", "azureml.core")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        module.__doc__ = f"Local stand-in for {name} (see airflow_parallel_run.azure.azureml_core)."
        for attribute in _MODULES.get(name, ()):
            setattr(module, attribute, getattr(azureml_core, attribute))
        if name in _MODULES:

            def __getattr__(attribute: str, _module: str = name) -> Any:
                if attribute.startswith("__"):
                    raise AttributeError(attribute)
                raise azureml_core.unavailable(_module, attribute)

            module.__getattr__ = __getattr__  # type: ignore[method-assign]


class AzuremlCoreFallback(importlib.abc.MetaPathFinder):
    """Finds the stand-in modules; consulted last, so it never shadows an installed package."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MODULES and fullname not in _PACKAGES:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=fullname in _PACKAGES)
        if fullname in _PACKAGES:
            spec.submodule_search_locations = []
        return spec


def azureml_core_installed() -> bool:
    """True when something other than this fallback provides `azureml.core`."""
    installed = [f for f in sys.meta_path if isinstance(f, AzuremlCoreFallback)]
    for finder in installed:
        sys.meta_path.remove(finder)
    try:
        return importlib.util.find_spec("azureml.core") is not None
    except (ImportError, ValueError):
        return False
    finally:
        sys.meta_path.extend(installed)


def install_azureml_core_fallback() -> bool:
    """Installs the finder unless a real `azureml.core` is importable; True when it was installed (now or
    earlier)."""
    if any(isinstance(f, AzuremlCoreFallback) for f in sys.meta_path):
        return True
    if azureml_core_installed():
        return False
    sys.meta_path.append(AzuremlCoreFallback())
    return True


def uninstall_azureml_core_fallback() -> None:
    """Removes the finder and the stand-in modules (for tests)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, AzuremlCoreFallback)]
    for name in list(sys.modules):
        module = sys.modules[name]
        spec = getattr(module, "__spec__", None)
        if spec is not None and isinstance(spec.loader, _Loader):
            del sys.modules[name]
