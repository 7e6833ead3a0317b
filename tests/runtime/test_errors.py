"""runtime.errors: the shared unavailable-backend type and the did-you-mean messages."""
from __future__ import annotations

import pytest

from runtime.errors import BackendUnavailable, check_choice, did_you_mean, unknown_name_error


def test_backend_unavailable_is_a_runtime_error():
    assert issubclass(BackendUnavailable, RuntimeError)


def test_did_you_mean():
    assert did_you_mean("sfot", ["soft", "gan"]) == " Did you mean 'soft'?"
    assert did_you_mean("zzzz", ["soft", "gan"]) == ""


def test_unknown_name_error():
    e = unknown_name_error("method", "sfot", ["gan", "soft"])
    assert isinstance(e, ValueError)
    assert str(e) == "unknown method 'sfot'. Did you mean 'soft'? Available: gan, soft"
    assert str(unknown_name_error("method", "x", ["gan"])) == "unknown method 'x'. Available: gan"


def test_check_choice():
    check_choice("mode", "a", ("a", "b"))
    with pytest.raises(ValueError, match=r"^mode must be one of \['stretch'\], got 'strech'. Did you mean 'stretch'\?$"):
        check_choice("mode", "strech", ("stretch",))
