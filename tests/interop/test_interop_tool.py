"""kquic-interop as a user meets it: missing files, user mistakes and Ctrl-C."""

from __future__ import annotations

import pytest

from tests.interop.conftest import python, run


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:70000/x",
        "https://127.0.0.1:0/x",
        "https://127.0.0.1/x",
        "https://127.0.0.1:port/x",
    ],
)
def test_a_url_without_a_usable_port_is_a_usage_error(tmp_path, url) -> None:
    result = run(
        python("-m", "kquic_tools.interop", "client", url, "--output", str(tmp_path), "--insecure")
    )
    assert result.returncode == 2 and "port from 1 to 65535" in result.stderr
    assert "Traceback" not in result.stderr
