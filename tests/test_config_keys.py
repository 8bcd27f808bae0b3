"""Every range key of cfg/default.yaml is read as a list, and every tolerance is range-checked."""

import pytest

from clipce_rtdetr.config import check_overrides
from clipce_rtdetr.errors import ConfigError


@pytest.mark.parametrize("key", ["beta_range", "airlight_range", "gamma_range", "distance_range", "rain_rate_range"])
def test_range_keys_are_read_as_lists(key):
    _, project = check_overrides({key: "[1,5]"})
    assert project[key] == [1, 5]


@pytest.mark.parametrize("key", ["export_tol", "export_tol_quant"])
def test_negative_export_tolerance_is_refused(key):
    with pytest.raises(ConfigError, match=key):
        check_overrides({key: "-0.1"})
