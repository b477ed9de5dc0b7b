"""tmws: a performance-first pattern execution service for LLM-agent systems.

::

    from tmws import ExecutionMode, create_pattern_execution_engine

    engine = await create_pattern_execution_engine()
    result = await engine.execute("check health", execution_mode=ExecutionMode.BALANCED)
"""

from tmws._version import __version__
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
