"""Regenerate the project's own datasets under data/ (a test checks the committed files match)."""

from transferkit.data.synthetic import write_quickstart, write_quickstart_preference, write_topics

if __name__ == "__main__":
    paths = write_quickstart("data/quickstart") + write_topics("data/topics")
    paths += write_quickstart_preference("data/quickstart", "data/quickstart-preference")
    for path in paths:
        print(path)
