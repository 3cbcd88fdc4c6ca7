"""The rule that shapes the house: the SMTP session layer never touches the ORM.

A module of ``smtpgateway/session/`` may not import ``django.db``, a models
module, or a storage module other than the job types
(``smtpgateway.storage.jobs``), directly or through any project module it
imports. Read from the source (ast), so an import inside a function or under
``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("agentmail_site", "apikeys", "inboxes", "smtpgateway")
SESSION_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts) for path in (ROOT / "smtpgateway" / "session").glob("*.py")
)
ALLOWED_STORAGE = {"smtpgateway.storage", "smtpgateway.storage.jobs"}


def module_path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module ``module`` imports, as written (``from a import b`` counts
    ``a`` and, if it is a module, ``a.b``)."""
    path = module_path(module)
    if path is None:
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}" for alias in node.names if module_path(f"{node.module}.{alias.name}")
            )
    return frozenset(found)


def forbidden(imported: str) -> bool:
    if imported == "django.db" or imported.startswith("django.db."):
        return True
    if imported.rsplit(".", 1)[-1] == "models":
        return True
    return imported.startswith("smtpgateway.storage") and imported not in ALLOWED_STORAGE


def chains_to_the_orm(start: str) -> list[list[str]]:
    """Import chains from ``start`` (through project modules) that end in something forbidden."""
    bad: list[list[str]] = []
    seen: set[str] = set()
    stack: list[list[str]] = [[start]]
    while stack:
        chain = stack.pop()
        for imported in sorted(imports_of(chain[-1])):
            if forbidden(imported):
                bad.append([*chain, imported])
            elif imported.split(".")[0] in PROJECT_PACKAGES and imported not in seen:
                seen.add(imported)
                stack.append([*chain, imported])
    return bad


def test_the_session_layer_has_modules() -> None:
    assert "smtpgateway.session.protocol" in SESSION_MODULES and len(SESSION_MODULES) >= 8


@pytest.mark.parametrize("module", SESSION_MODULES)
def test_a_session_module_reaches_no_orm(module: str) -> None:
    chains = chains_to_the_orm(module)
    assert not chains, "\n".join(" -> ".join(chain) for chain in chains)


def test_the_rule_catches_a_forbidden_import() -> None:
    """The check itself can fail: the storage threads reach the ORM."""
    assert chains_to_the_orm("smtpgateway.storage.threads")
    assert forbidden("django.db.models") and forbidden("inboxes.models") and forbidden("smtpgateway.storage.commits")
    assert not forbidden("smtpgateway.storage.jobs") and not forbidden("django.utils.timezone")
