import json

import pytest
from tiny import write_jsonl

from transferkit.data import read_examples, read_rows
from transferkit.data.schema import detect_schema
from transferkit.data.tokenize import IGNORE, check_has_labels, tokenize_examples, tokenize_instruction
from transferkit.errors import DataError

ROWS = [{"prompt": "What is two plus two?", "completion": "four"},
        {"prompt": "Say hello", "completion": "hello world"}]


def test_reads_every_format_to_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "d.csv").write_text("prompt,completion\n\"What is two plus two?\",four\nSay hello,hello world\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "hf"))
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet", "hf"):
        rows = read_rows(tmp_path / name)
        assert [r.fields for r in rows] == ROWS, name


def test_jsonl_lines_counted_with_blank_lines(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert [r.line for r in read_rows(tmp_path / "d.jsonl")] == [1, 3]


def test_txt_is_language_modeling(tmp_path):
    (tmp_path / "book.txt").write_text("It was a truth universally acknowledged.\n\nThe end.\n")
    schema, examples = read_examples(str(tmp_path / "book.txt"))
    assert schema == "lm" and [e.text for e in examples] == ["It was a truth universally acknowledged.", "The end."]


@pytest.mark.parametrize("columns, schema", [
    ({"prompt", "completion"}, "instruction"),
    ({"messages"}, "instruction"),
    ({"instruction", "input", "output"}, "instruction"),
    ({"text"}, "lm"),
    ({"text", "label"}, "classification"),
    ({"prompt", "chosen", "rejected"}, "preference"),
    ({"foo"}, None),
])
def test_schema_detection(columns, schema):
    assert detect_schema(columns) == schema


def test_instruction_input_output_is_joined(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Translate", "input": "chat", "output": "cat"}])
    _, (ex,) = read_examples(str(tmp_path / "d.jsonl"))
    assert ex.messages == ({"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"})


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', r"d.jsonl:2: malformed JSON"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', r"d.jsonl:2: field 'completion': missing required field"),
    ('{"prompt": "a", "completion": null}\n', r"d.jsonl:1: field 'completion': is null"),
    ('{"prompt": "a", "completion": 3}\n', r"d.jsonl:1: field 'completion': must be a string, got int"),
    ('{"foo": 1}\n', r"d.jsonl:1: cannot detect the task schema"),
    ('[1, 2]\n', r"d.jsonl:1: each line must be a JSON object"),
    ('\n\n', r"d.jsonl: no data rows"),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', r"d.jsonl:1: field 'messages\[0\].role': unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": "x"}]}\n', r"d.jsonl:1: field 'messages': the last message must be from the assistant"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}\n', r"d.jsonl:1: field 'messages\[0\].role': an assistant message must follow"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        read_examples(str(tmp_path / "d.jsonl"))


def test_non_utf8_and_missing_paths(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8"):
        read_rows(tmp_path / "d.jsonl")
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"is a folder, but not a saved Hugging Face dataset"):
        read_rows(tmp_path)


def test_csv_with_missing_value_names_the_line(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,completion\na,b\nc\n")
    with pytest.raises(DataError, match=r"d.csv:3: field 'completion': fewer values"):
        read_rows(tmp_path / "d.csv")


def _labelled_text(tokenizer, ids, labels):
    return tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE])


def test_completion_only_masking(tokenizer, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "What is two plus two?", "completion": "It is four."}])
    schema, examples = read_examples(str(tmp_path / "d.jsonl"))
    ids, labels = tokenize_instruction(tokenizer, examples[0])
    assert len(ids) == len(labels)
    # Exactly the assistant's reply and the end-of-turn token the template adds are labelled.
    assert _labelled_text(tokenizer, ids, labels) == "It is four.<|im_end|>\n"
    prompt_len = len(tokenizer.apply_chat_template([{"role": "user", "content": "What is two plus two?"}],
                                                   tokenize=False, add_generation_prompt=True))
    assert all(l == IGNORE for l in labels[:5]) and prompt_len > 0


def test_multi_turn_masking_labels_every_assistant_turn(tokenizer, tmp_path):
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                         {"role": "user", "content": "two plus two?"}, {"role": "assistant", "content": "four"}]}
    write_jsonl(tmp_path / "d.jsonl", [chat])
    _, examples = read_examples(str(tmp_path / "d.jsonl"))
    ids, labels = tokenize_instruction(tokenizer, examples[0])
    spans, current = [], []
    for t, l in zip(ids, labels):
        if l != IGNORE:
            current.append(t)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    assert spans == ["hi<|im_end|>\n", "four<|im_end|>\n"]


def test_overlong_truncates_and_counts_or_errors(tokenizer, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "word " * 50, "completion": "done"}, {"prompt": "a", "completion": "b"}])
    schema, examples = read_examples(str(tmp_path / "d.jsonl"))
    out = tokenize_examples(tokenizer, examples, schema, max_length=16, overlong="truncate")
    assert [t.truncated for t in out] == [True, False] and len(out[0].input_ids) == 16
    with pytest.raises(DataError, match=r"d.jsonl:1: example is \d+ tokens, longer than data.max_length=16"):
        tokenize_examples(tokenizer, examples, schema, max_length=16, overlong="error")


def test_preflight_refuses_all_masked_data(tokenizer, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "word " * 50, "completion": "done"}])
    schema, examples = read_examples(str(tmp_path / "d.jsonl"))
    out = tokenize_examples(tokenizer, examples, schema, max_length=8)
    with pytest.raises(DataError, match="after masking, no token carries a label"):
        check_has_labels(out, "d.jsonl")


def test_lm_text_is_chunked_not_cut(tokenizer, tmp_path):
    (tmp_path / "d.txt").write_text("the quick brown fox jumps over the lazy dog " * 6 + "\n")
    schema, examples = read_examples(str(tmp_path / "d.txt"))
    out = tokenize_examples(tokenizer, examples, schema, max_length=10)
    whole = tokenizer(examples[0].text)["input_ids"] + [tokenizer.eos_token_id]
    assert sum(len(t.input_ids) for t in out) == len(whole)
    assert all(t.labels == t.input_ids for t in out)


def test_quickstart_data_matches_generator(tmp_path):
    from pathlib import Path

    from functools import partial

    from transferkit.data.synthetic import write_quickstart, write_quickstart_preference, write_topics

    data = Path(__file__).resolve().parents[1] / "data"
    shipped = data / "quickstart"
    preference = partial(write_quickstart_preference, shipped)
    for writer, folder in ((write_quickstart, "quickstart"), (write_topics, "topics"),
                           (preference, "quickstart-preference")):
        for path in writer(tmp_path / folder):
            assert path.read_text() == (data / folder / path.name).read_text(), \
                f"regenerate data/{folder}/{path.name}: python scripts/make_quickstart_data.py"
    train = {json.loads(l)["prompt"] for l in (shipped / "train.jsonl").read_text().splitlines()}
    test = {json.loads(l)["prompt"] for l in (shipped / "test.jsonl").read_text().splitlines()}
    assert not train & test
    pairs = [json.loads(line) for line in (data / "quickstart-preference" / "test.jsonl").read_text().splitlines()]
    assert [p["prompt"] for p in pairs] == [json.loads(line)["prompt"] for line in
                                             (shipped / "test.jsonl").read_text().splitlines()]
    for pair in pairs:  # one field wrong, the other three as in the correct record
        chosen, rejected = json.loads(pair["chosen"]), json.loads(pair["rejected"])
        assert [k for k in chosen if chosen[k] != rejected[k]] == [pair["slice"]]


def test_shipped_tasks_share_no_example_between_splits():
    from pathlib import Path

    from transferkit.data.overlap import split_overlap

    data = Path(__file__).resolve().parents[1] / "data"
    for task in ("quickstart", "topics"):
        splits = {s: read_examples(str(data / task / f"{s}.jsonl"))[1] for s in ("train", "validation", "test")}
        overlap = split_overlap(splits)
        assert set(overlap) == {"train/validation", "train/test", "validation/test"}
        assert all(counts["normalised"] == 0 for counts in overlap.values()), (task, overlap)


def _ex(line: int, text: str = "", prompt: str | None = None, answer: str = "a"):
    from transferkit.data.schema import Example

    if prompt is not None:
        return Example("f.jsonl", line, messages=({"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": answer}))
    return Example("f.jsonl", line, text=text, label="x")


def test_overlap_counts_exact_and_normalised_matches():
    from transferkit.data.overlap import count_overlap

    train = [_ex(1, "The cat sat."), _ex(2, "A dog ran"), _ex(3, prompt="Name a colour")]
    later = [_ex(1, "The cat sat."),          # exact
             _ex(2, "  a DOG   ran "),         # after case and whitespace normalisation
             _ex(3, "A dog ran away"),         # different text
             _ex(4, prompt="name a colour", answer="blue")]  # the same prompt, another answer: still a leak
    counts = count_overlap(train, later)
    assert counts == {"exact": 1, "normalised": 3, "first": "f.jsonl:1 = f.jsonl:1"}
    assert count_overlap(train, [_ex(1, "nothing shared")])["normalised"] == 0


def test_runs_report_overlap_and_can_refuse_it(tiny_config, quick_data, tmp_path):
    from tiny import write_jsonl

    from transferkit import train
    from transferkit.data.synthetic import person_records

    rows = person_records(40, seed=1)  # the training rows of `quick_data`
    leaky = write_jsonl(tmp_path / "leaky.jsonl", rows[:3] + person_records(3, seed=9))
    summary = train(tiny_config(f"data.test={leaky}", "train.max_steps=1", "eval.baseline=false",
                                "eval.exact_match=false"))
    assert summary["data"]["overlap"]["train/test"]["normalised"] == 3
    assert summary["data"]["overlap"]["train/validation"]["normalised"] == 0
    assert any("3 test examples also occur in train" in flag for flag in summary["flags"])
    from transferkit import evaluate_run  # `eval` checks a file against the run's training data the same way
    result, _ = evaluate_run(str(leaky), run_dir=str(tmp_path / "run"), precision="fp32", reference="none")
    assert result["overlap"]["train/evaluated"]["normalised"] == 3
    assert any("3 evaluated examples also occur in train" in flag for flag in result["flags"])
    with pytest.raises(DataError, match=r"leaky.jsonl:1: this test example also occurs in train"):
        train(tiny_config(f"data.test={leaky}", "data.overlap=error", f"output_dir={tmp_path / 'refused'}"))
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("name, text, first", [
    ("d.csv", "text,label\na,x\nb,y\nc,x\nd,x\n,y\ne,x\nf,y\ng,x,extra\n", "d.csv:6: field 'text'"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n{"text": "c", "label": "x"}\n{oops\n',
     "d.jsonl:2: field 'text'"),
])
def test_the_first_bad_row_is_reported_first(tmp_path, name, text, first):
    """A row the reader cannot parse (line 9, line 4) comes after a row that parses but cannot be used (line 6,
    line 2): the error names the earlier one."""
    from transferkit.data import read_examples

    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=first):
        read_examples(str(tmp_path / name))
