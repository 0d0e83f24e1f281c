"""The layering STYLE.md asks for: the battery is a pure library, the package root stays light."""

from __future__ import annotations

import subprocess
import sys

import obstacle

_FORBIDDEN_IN_BATTERY = (
    "fastapi",
    "celery",
    "sqlalchemy",
    "httpx",
    "redis",
    "uvicorn",
    "starlette",
)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            f"{code}\nimport sys\nprint('\\n'.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(out.stdout.split())


def test_battery_never_imports_server_or_transport_libraries() -> None:
    loaded = _modules_after(
        "import obstacle.battery.analysis, obstacle.battery.commands, obstacle.battery.demo\n"
        "import obstacle.battery.verdict, obstacle.battery.report\n"
        "from obstacle.battery.analysis import _quantities\n"
        "from obstacle.battery.presets import get_preset\n"
        "_quantities(get_preset('full'))"
    )
    leaked = sorted(m for m in loaded if m.split(".")[0] in _FORBIDDEN_IN_BATTERY)
    assert not leaked, f"the battery imported {leaked}"


def test_importing_obstacle_does_not_import_torch() -> None:
    loaded = _modules_after("import obstacle, obstacle.errors, obstacle.artifacts")
    assert "torch" not in loaded


def test_public_names_are_exported_and_complete() -> None:
    import inspect

    helpers = {"annotations", "TYPE_CHECKING", "Any", "import_module"}
    public = {
        n
        for n in dir(obstacle)
        if not n.startswith("_") and not inspect.ismodule(getattr(obstacle, n))
    } - helpers
    public |= set(obstacle._LAZY)
    assert set(obstacle.__all__) == public | {"__version__"}
    for name in obstacle.__all__:
        assert getattr(obstacle, name) is not None


def test_every_error_descends_from_the_single_root() -> None:
    import obstacle.errors as errors

    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    for cls in classes:
        if cls is errors.ConvergenceWarning:
            assert issubclass(cls, UserWarning)
        else:
            assert issubclass(cls, errors.ObstacleError), cls


def _imports_of(package: str) -> dict[str, set[str]]:
    """Every ``obstacle.*`` module each file of ``package`` imports (top level or inside functions)."""
    import ast
    from pathlib import Path

    root = Path(obstacle.__file__).parent / package
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(root.parent))] = {n for n in names if n.startswith("obstacle.")}
    return found


def test_the_service_and_the_workers_meet_only_in_the_platform() -> None:
    """service -> platform <- workers: neither imports the other (the API process loads no worker
    code, a worker no web code), and the platform imports neither."""
    rules = {
        "platform": ("obstacle.service", "obstacle.workers", "obstacle.client"),
        "workers": ("obstacle.service", "obstacle.client"),
        "service": ("obstacle.workers",),
    }
    offences = [
        f"{file} imports {module}"
        for package, forbidden in rules.items()
        for file, modules in _imports_of(package).items()
        for module in sorted(modules)
        if module.startswith(forbidden)
    ]
    assert not offences, offences
