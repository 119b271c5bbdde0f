"""Property-based fuzzing of the readers and schema detection: any bytes in give
either rows or a `DataError` (file, line, field), never a traceback."""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transferkit.data import read_examples
from transferkit.errors import DataError

SUFFIXES = [".jsonl", ".json", ".csv", ".txt", ".parquet"]
FIELDS = ["prompt", "completion", "messages", "instruction", "input", "output", "text", "text_pair", "label",
          "chosen", "rejected", "role", "content"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5),
                                                                        children, max_size=4),
    max_leaves=12)
rows = st.lists(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5), max_size=6)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot", None]),
                                           "content": st.text(max_size=10) | st.none()}), max_size=5)
settings_ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _outcome(content: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        try:
            schema, examples = read_examples(str(path))
        except DataError as exc:
            assert str(path) in str(exc)  # every error names the file
            return None
    assert examples and schema in ("instruction", "lm", "classification")
    return examples


@settings_
@given(content=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_any_bytes_give_rows_or_a_data_error(content, suffix):
    _outcome(content, suffix)


@settings_
@given(records=rows, suffix=st.sampled_from([".jsonl", ".json"]))
def test_any_json_records_give_examples_or_a_data_error(records, suffix):
    text = "".join(json.dumps(r) + "\n" for r in records) if suffix == ".jsonl" else json.dumps(records)
    examples = _outcome(text.encode(), suffix)
    if examples is not None:
        assert len(examples) == len(records)  # nothing dropped silently


@settings_
@given(chats=st.lists(messages, min_size=1, max_size=4))
def test_any_chat_gives_examples_or_a_data_error(chats):
    text = "".join(json.dumps({"messages": m}) + "\n" for m in chats)
    examples = _outcome(text.encode(), ".jsonl")
    if examples is not None:
        assert all(ex.messages[-1]["role"] == "assistant" for ex in examples)


@settings_
@given(cells=st.lists(st.lists(st.text(max_size=8), min_size=1, max_size=4), min_size=1, max_size=5))
def test_any_csv_gives_rows_or_a_data_error(cells):
    text = "\n".join(",".join(json.dumps(c) if "," in c else c for c in row) for row in cells)
    _outcome(text.encode("utf-8", "surrogatepass"), ".csv")
