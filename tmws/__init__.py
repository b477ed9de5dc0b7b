"""tmws: a performance-first pattern execution service for LLM-agent systems.

::

    from tmws import ExecutionMode, create_pattern_execution_engine

    engine = await create_pattern_execution_engine()
    result = await engine.execute("check health", execution_mode=ExecutionMode.BALANCED)
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

# The installed distribution's version (PEP 440, from pyproject.toml's [project] version):
# tmws_info, `tmws --version`, /health and /openapi.json all report this one. It is tmws's
# own release number, not the "TMWS v2.2.0" of the service the operations guide documents.
__version__: str
try:
    __version__ = _distribution_version("tmws")
except PackageNotFoundError:  # a source tree imported without being installed
    __version__ = "0+unknown"

from tmws.config import Settings
from tmws.engine import PatternExecutionEngine, create_pattern_execution_engine
from tmws.errors import TmwsError
from tmws.models import (
    ExecutionMode,
    ExecutionResult,
    PatternDefinition,
    PatternType,
    RoutingDecision,
)

__all__ = [
    "ExecutionMode",
    "ExecutionResult",
    "PatternDefinition",
    "PatternExecutionEngine",
    "PatternType",
    "RoutingDecision",
    "Settings",
    "TmwsError",
    "__version__",
    "create_pattern_execution_engine",
]
