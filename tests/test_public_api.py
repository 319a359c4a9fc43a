"""The public surface stays complete and coherent (httpx-style): what `__all__` lists exists, what a
package exposes is listed, and every error we raise hangs under `DriftlabelError`."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

from driftlabel import DriftlabelError

PACKAGES = ["driftlabel", "driftlabel.models", "driftlabel.judge", "driftlabel.streams"]
ERROR_MODULES = ["driftlabel.models.errors", "driftlabel.judge.errors", "driftlabel.streams.errors"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_existing_names_once(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported, f"{name}.__all__ is empty"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


@pytest.mark.parametrize("name", PACKAGES)
def test_everything_public_is_in_all(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_") and not isinstance(value, types.ModuleType) and attr != "annotations"
    }
    unlisted = sorted(public - set(module.__all__))
    assert not unlisted, f"{name} exposes names not in __all__: {unlisted}"


@pytest.mark.parametrize("name", ERROR_MODULES)
def test_errors_are_rooted_and_exported(name: str) -> None:
    errors = importlib.import_module(name)
    package = importlib.import_module(name.rsplit(".", 1)[0])
    classes = [
        cls
        for cls in vars(errors).values()
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name
    ]
    assert classes, f"{name} defines no errors"
    for cls in classes:
        assert issubclass(cls, DriftlabelError), f"{cls.__qualname__} does not derive from DriftlabelError"
        assert cls.__doc__, f"{cls.__qualname__} has no docstring"
        exported = getattr(package, cls.__name__, None)
        assert exported is cls, f"{cls.__name__} not exported by {package.__name__}"


def test_cli_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from driftlabel.streams.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in (
        "demo",
        "broker",
        "worker",
        "produce",
        "consume",
        "add-class",
        "train",
        "classify",
        "judge-sim",
        "describe",
    ):
        assert command in out, f"`driftlabel --help` does not list {command}"
