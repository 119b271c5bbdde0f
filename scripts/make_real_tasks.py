"""Write the real tasks of `transferkit/data/real_tasks.py` under data/ (committed; re-run to regenerate).

    .venv/bin/python scripts/make_real_tasks.py      # data/austen-novel, data/austen-speech, data/chitchat-reply
"""

from pathlib import Path

from transferkit.data.real_tasks import write_real_tasks

if __name__ == "__main__":
    for path in write_real_tasks(Path(__file__).resolve().parents[1] / "data"):
        print(path, sum(1 for _ in path.open()))
