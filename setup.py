"""Package discovery (DESIGN.md section 2): ``sdl_anchor`` and every package under it, plus the top-level
``integrations/`` and ``eval/`` trees mapped into its namespace as ``sdl_anchor.integrations`` and
``sdl_anchor.eval``. Nothing is listed by hand, so a new module cannot be left out of the wheel.
Everything else about the distribution lives in ``pyproject.toml``."""

from setuptools import find_packages, setup

MAPPED = {"sdl_anchor.integrations": "integrations", "sdl_anchor.eval": "eval"}


def discovered_packages() -> list[str]:
    packages = find_packages(include=["sdl_anchor", "sdl_anchor.*"])
    for package, folder in MAPPED.items():
        packages += [package, *(f"{package}.{sub}" for sub in find_packages(folder))]
    return packages


setup(packages=discovered_packages(), package_dir=MAPPED)
