"""Shared test settings: bounded hypothesis runs, no timing-based deadlines.

CI uses the derandomized ``ci`` profile so a run is reproducible; ``dev`` explores anew
each time.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
