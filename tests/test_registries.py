"""One registry type: every registry refuses an unknown name with one user error that lists the valid names."""
from __future__ import annotations

import pytest

from emq.apply.arch import ARCH_SPACES
from emq.baselines import BASELINES
from emq.bench.registry import BENCHMARKS, BUILDERS
from emq.stats import STATS
from primitives import OPS
from primitives.errors import EMQUserError, UnknownNameError
from primitives.registry import Registry


@pytest.mark.parametrize("registry", [OPS, STATS, BENCHMARKS, BUILDERS, BASELINES, ARCH_SPACES],
                         ids=["ops", "stats", "benchmarks", "builders", "baselines", "arch-spaces"])
def test_every_registry_is_one_type_with_one_unknown_name_error(registry):
    assert isinstance(registry, Registry) and len(registry) > 0
    with pytest.raises(UnknownNameError) as info:
        registry["no-such-name"]
    message = str(info.value)
    assert isinstance(info.value, EMQUserError) and "\n" not in message
    assert "'no-such-name'" in message and sorted(registry)[0] in message


def test_a_name_is_registered_once():
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        registry.add("a", 2)
    assert registry.get("b") is None  # dict semantics are kept for optional lookups
