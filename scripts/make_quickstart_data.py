"""Regenerate data/quickstart/*.jsonl (a test checks the committed files match)."""

from transferkit.data.synthetic import write_quickstart

if __name__ == "__main__":
    for path in write_quickstart("data/quickstart"):
        print(path)
