"""The wire messages of the TorchServe and Ray backends (serving/core/wire.py)."""

import ast

import numpy as np
import pytest

from serving.core import wire


def test_a_message_round_trips_arrays_and_structure():
    message = {"op": "generate", "args": {"seed": 3, "rows": [np.arange(6, dtype=np.float32).reshape(2, 3)]}}
    back = wire.unpack(wire.pack(message))
    assert back["op"] == "generate" and back["args"]["seed"] == 3
    assert back["args"]["rows"][0].dtype == np.float32 and back["args"]["rows"][0].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_spurious_ast_error_from_a_racing_thread_is_parsed_again(monkeypatch):
    """CPython 3.11: ast.literal_eval (np.load's header parse) can fail with SystemError while another thread parses
    too; unpack parses again, and gives up after PARSE_ATTEMPTS."""
    message = wire.pack({"x": np.ones(4, np.uint8)})
    real, failures = ast.literal_eval, [2]

    def racing(text):
        if failures[0]:
            failures[0] -= 1
            raise SystemError("AST constructor recursion depth mismatch (before=45, after=56)")
        return real(text)

    monkeypatch.setattr(ast, "literal_eval", racing)
    assert wire.unpack(message)["x"].tolist() == [1, 1, 1, 1]
    failures[0] = wire.PARSE_ATTEMPTS
    with pytest.raises(SystemError, match="recursion depth mismatch"):
        wire.unpack(message)
