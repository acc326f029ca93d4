"""The version of sdl-anchor, in one place (read by pyproject.toml and by ``sdl_anchor.__version__``)."""

__version__ = "0.2.0"
