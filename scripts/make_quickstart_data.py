"""Regenerate the project's own datasets under data/ (a test checks the committed files match)."""

from transferkit.data.synthetic import write_quickstart, write_topics

if __name__ == "__main__":
    for path in write_quickstart("data/quickstart") + write_topics("data/topics"):
        print(path)
