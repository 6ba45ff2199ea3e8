"""``modelyard fetch-bundled``: install the packages carrying the bundled weights and data the way modelyard reads them.

Pinned versions, ``--no-deps`` for the packages whose declared dependencies are not needed (or harmful), with the
pip of the running Python (``sys.executable -m pip``), so they land where modelyard itself is installed. The table
of packages is :data:`modelyard._internal.bundled.BUNDLED_PACKAGES`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shlex
import subprocess
import sys
from typing import IO, Any

from rich.console import Console

from modelyard._internal.bundled import BUNDLED_PACKAGES, BundledPackage
from modelyard._internal.packages import module_installed, package_dir
from modelyard.errors import ModelyardError


def select_packages(only: list[str] | None) -> list[BundledPackage]:
    """The packages named by ``--only`` (bundled names or PyPI names; ``all`` for every one), else the defaults.

    Raises:
        ModelyardError: a name that is neither (the message lists the names).
    """
    if not only:
        return [p for p in BUNDLED_PACKAGES.values() if p.default]
    if "all" in only:
        return list(BUNDLED_PACKAGES.values())
    by_distribution = {p.distribution: p for p in BUNDLED_PACKAGES.values()}
    chosen: list[BundledPackage] = []
    for name in only:
        pkg = BUNDLED_PACKAGES.get(name) or by_distribution.get(name.lower().replace("_", "-"))
        if pkg is None:
            names = ", ".join(BUNDLED_PACKAGES)
            raise ModelyardError(f"--only '{name}' is not a bundled package; use one of {names}, or all")
        if pkg not in chosen:
            chosen.append(pkg)
    return chosen


def installed_version(pkg: BundledPackage) -> str | None:
    """The installed version of the package's distribution, or ``None``."""
    try:
        return importlib.metadata.version(pkg.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def files_present(pkg: BundledPackage) -> bool:
    """Whether the package is found and holds every file modelyard reads from it."""
    root = package_dir(pkg.module)
    return root is not None and all((root / f).is_file() for f in pkg.files)


def is_current(pkg: BundledPackage) -> bool:
    """Installed at the pinned version with its files in place."""
    return installed_version(pkg) == pkg.version and files_present(pkg)


def pip_commands(
    packages: list[BundledPackage], *, force: bool = False, quiet: bool = False, python: str | None = None
) -> list[list[str]]:
    """The pip commands that install ``packages``: one ``--no-deps`` command and one with dependencies."""
    base = [python or sys.executable, "-m", "pip", "install"]
    base += ["-q"] if quiet else []
    base += ["--force-reinstall"] if force else []
    no_deps = [p.requirement for p in packages if p.no_deps]
    with_deps = [p.requirement for p in packages if not p.no_deps]
    commands = []
    if no_deps:
        commands.append([*base, "--no-deps", *no_deps])
    if with_deps:
        commands.append([*base, *with_deps])
    return commands


def _stderr() -> IO[Any] | None:
    """Where pip's own output goes: our stderr, so stdout keeps only the command's result."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests): let pip inherit
        return None
    return sys.stderr


def fetch_bundled(
    only: list[str] | None, *, dry_run: bool, force: bool, quiet: bool, console: Console
) -> list[list[str]]:
    """Install the selected bundled packages that are missing or at another version; returns the pip commands.

    With ``dry_run`` nothing is installed and the commands are only returned.

    Raises:
        ModelyardError: an unknown name, pip missing or failing, or a package that installed without its files.
    """
    packages = select_packages(only)
    todo = packages if force else [p for p in packages if not is_current(p)]
    for pkg in packages:
        if pkg not in todo:
            console.print(f"{pkg.name}: {pkg.requirement} already installed", highlight=False)
    commands = pip_commands(todo, force=force, quiet=quiet)
    if dry_run or not commands:
        if not commands:
            console.print("nothing to install", highlight=False)
        return commands
    if not module_installed("pip"):
        raise ModelyardError(
            f"pip is not available in this Python ({sys.executable}); run: {sys.executable} -m ensurepip --upgrade"
        )
    for command in commands:
        console.print(f"running: {shlex.join(command)}", highlight=False, soft_wrap=True)
        code = subprocess.run(command, stdout=_stderr(), check=False).returncode
        if code != 0:
            raise ModelyardError(f"pip failed (exit status {code}) running: {shlex.join(command)}")
    importlib.invalidate_caches()
    for pkg in todo:
        if not files_present(pkg):
            raise ModelyardError(
                f"{pkg.name}: {pkg.requirement} installed but {', '.join(pkg.files)} not found in it; "
                f"reinstall: {pkg.install} --force-reinstall"
            )
        console.print(f"{pkg.name}: installed {pkg.requirement} — {pkg.what}", highlight=False, soft_wrap=True)
    return commands
