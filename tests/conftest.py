"""pytest configuration shared by all tests."""
from hypothesis import HealthCheck, settings

settings.register_profile(
    "wgc", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("wgc")
