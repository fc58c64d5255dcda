"""A run's code, named without git: the same code gives the same hash wherever it sits and
however the job was started; a one-byte change to a job changes it; what a working directory
holds beside its code (environments, caches, state, data) does not count."""

from __future__ import annotations

import shutil
from pathlib import Path

from shipyard.bundle.lineage import code_hash, run_code


def checkout(root: Path) -> Path:
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "train.py").write_text("print('train')\n")
    (root / "configs").mkdir()
    (root / "configs" / "churn.yaml").write_text("model: {name: churn}\n")
    (root / "requirements.lock").write_text("ray==2.60.0\n")
    return root


def test_the_same_code_has_the_same_hash_and_one_byte_changes_it(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("__version__ = '1'\n")
    here = checkout(tmp_path / "here")
    first = code_hash({"workdir": here, "shipyard": package})
    assert first["files"] == 4 and first["truncated"] is False
    there = tmp_path / "there"  # the same files elsewhere: a job's unpacked working directory
    shutil.copytree(here, there)
    for junk in (".venv/lib/x.py", "state/mlflow/run.yaml", "jobs/__pycache__/train.py",
                 ".git/hooks/pre-commit.py", "data/table.parquet", "notes.md"):  # fmt: skip
        (there / junk).parent.mkdir(parents=True, exist_ok=True)
        (there / junk).write_text("not the job's code\n")
    assert code_hash({"workdir": there, "shipyard": package}) == first
    (there / "jobs" / "train.py").write_text("print('train!')\n")  # one byte
    changed = code_hash({"workdir": there, "shipyard": package})
    assert changed["sha256"] != first["sha256"] and changed["files"] == 4
    (there / "jobs" / "train.py").write_text("print('train')\n")
    (there / "jobs" / "train2.py").write_text("print('train')\n")  # a file moved or added
    assert code_hash({"workdir": there, "shipyard": package})["sha256"] != first["sha256"]


def test_this_process_hashes_its_working_directory_and_the_shipyard_it_imported() -> None:
    import shipyard

    code = run_code()
    assert len(str(code["sha256"])) == 64 and int(str(code["files"])) > 50
    again = code_hash({"workdir": Path.cwd(), "shipyard": Path(shipyard.__file__).parent})
    assert again == code
