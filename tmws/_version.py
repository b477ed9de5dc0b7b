"""tmws's version: the installed distribution's (PEP 440, from pyproject.toml's [project]).

Its own module so that anything may import it without importing the package's public face
(``tmws/__init__.py`` imports the engine, which imports most of tmws). ``tmws_info``,
``tmws --version``, /health and /openapi.json all report this one. It is tmws's own release
number, not the "TMWS v2.2.0" of the original service (deploy/README.md, Where the guide
is wrong).
"""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

__version__: str
try:
    __version__ = version("tmws")
except PackageNotFoundError:  # a source tree imported without being installed
    __version__ = "0+unknown"
