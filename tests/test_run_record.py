"""`mimir_hf.run_record` on its own: folders under tmp_path, no training (the commands' use of it is tested in
test_reliability.py, test_examples.py and test_hub.py)."""

import fcntl
import json
import os
from dataclasses import asdict, fields

import pytest
import torch
from safetensors.torch import save_file

from mimir_hf import run_record
from mimir_hf.run_record import (
    LOCK_FILE,
    RUN_FILE,
    RunRecord,
    SoftwareEnvironment,
    failures_recorded,
    lock_output_dir,
    mark_complete,
    mark_failed,
    prepare_output_dir,
    read_record,
    software_environment,
    write_record,
)

ARGUMENTS = {"learning_rate": 0.001, "pgd_steps": [2, 4], "seed": 0}


@pytest.fixture(autouse=True)
def no_lock_left_held():
    """Each test's folders are released after it, whatever it left held."""
    yield
    for folder in list(run_record._held_locks):
        run_record._release_lock(folder)


def snapshot(folder):
    """Every file under `folder` and its bytes, but the lock file."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def finished_run(folder, script="run_pretraining", arguments=ARGUMENTS, **results):
    """A complete run in `folder` (which may hold a user's files): its weights, a checkpoint, its record."""
    prepare_output_dir(str(folder), script, arguments, overwrite=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    mark_complete(str(folder), **results)


# ----------------------------------------------------------------------------------------------------------------
# One run per folder
# ----------------------------------------------------------------------------------------------------------------


def test_the_lock_refuses_a_second_holder_and_names_it(tmp_path):
    with open(tmp_path / LOCK_FILE, "w") as other:  # another run's lock: its own open file, as another process has
        other.write("pid 4242 on elsewhere, since 2024-01-01 00:00:00")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=r"in use by another run \(pid 4242 on elsewhere, since 2024-01-01"):
            lock_output_dir(str(tmp_path))
        with pytest.raises(ValueError, match="in use by another run"):
            prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=True)
        assert not (tmp_path / RUN_FILE).exists()  # refused before anything was written
    lock_output_dir(str(tmp_path))  # the other holder let go
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    with open(tmp_path / LOCK_FILE) as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # now held by this process
    run_record._release_lock(str(tmp_path))
    assert not (tmp_path / LOCK_FILE).exists()


# ----------------------------------------------------------------------------------------------------------------
# Nothing a user owns is deleted
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["is", "contains", "is inside"])
def test_an_output_folder_overlapping_an_input_is_refused_before_anything_is_made(tmp_path, where):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "0.png").write_bytes(b"png")
    output = {"is": data, "contains": tmp_path, "is inside": data / "cat" / "run"}[where]
    before = snapshot(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=f"--output_dir {output} {where} the input {data}; .*Choose another"):
            prepare_output_dir(str(output), "run_pretraining", ARGUMENTS, overwrite, inputs=(str(data), None))
    assert snapshot(tmp_path) == before and not (data / "cat" / "run").exists()
    assert not run_record._held_locks


def test_another_run_is_refused_and_overwrite_removes_only_that_run_s_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine, there before the run")
    finished_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine, added after the run")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="already holds a run_pretraining run with other arguments"):
        prepare_output_dir(str(tmp_path), "run_pretraining", {**ARGUMENTS, "seed": 1}, overwrite=False)
    assert snapshot(tmp_path) == before

    assert prepare_output_dir(str(tmp_path), "run_finetuning", ARGUMENTS, overwrite=True) is None
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, RUN_FILE, "notes.txt", "thesis.tex"]
    assert (tmp_path / "thesis.tex").read_text() == "mine, there before the run"
    assert (tmp_path / "notes.txt").read_text() == "mine, added after the run"
    assert read_record(str(tmp_path)) == RunRecord("run_finetuning", ARGUMENTS, preexisting=["notes.txt", "thesis.tex"])


def test_a_refused_run_leaves_the_unfinished_run_it_found_as_it_was(tmp_path):
    """The refusal ends the command with an error: the folder must not be marked failed in the name of the run that
    owns it (which resumes later), and it is released at once."""
    prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=False)
    (tmp_path / "trainer_state.json").write_text("{}")
    run_record._release_lock(str(tmp_path))  # that run was interrupted: its record says "running"
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="other arguments"), failures_recorded():
        prepare_output_dir(str(tmp_path), "run_pretraining", {**ARGUMENTS, "seed": 1}, overwrite=False)
    assert snapshot(tmp_path) == before and read_record(str(tmp_path)).status == "running"
    assert not run_record._held_locks and not (tmp_path / LOCK_FILE).exists()
    assert prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=False) is None  # it resumes


def test_a_folder_without_the_marker_is_never_emptied(tmp_path):
    (tmp_path / "data.csv").write_text("a,b")
    (tmp_path / "README.md").write_text("my readme")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"holds files of something else \(README.md, data.csv\).*Nothing in it"):
        prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=False)
    with pytest.raises(ValueError, match=r"files this run would replace \(README.md\) and that no mimir_hf run"):
        prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=True)
    assert snapshot(tmp_path) == before
    (tmp_path / "README.md").unlink()
    prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=True)  # reused, beside the user's file
    assert (tmp_path / "data.csv").read_text() == "a,b"
    assert read_record(str(tmp_path)).preexisting == ["data.csv"]


def test_a_run_that_stopped_before_listing_its_files_loses_only_names_the_scripts_write(tmp_path):
    (tmp_path / RUN_FILE).write_text(json.dumps({"script": "run_pretraining", "arguments": {}, "status": "running"}))
    for name in ("model.safetensors", "my_results.csv"):
        (tmp_path / name).write_text(name)
    prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, RUN_FILE, "my_results.csv"]


# ----------------------------------------------------------------------------------------------------------------
# A half-written run is never complete; an unfinished run resumes
# ----------------------------------------------------------------------------------------------------------------


def test_mark_complete_writes_the_record_last_with_the_environment_and_it_reads_back_equal(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    finished_run(tmp_path, metrics={"loss": 0.5}, effective_settings={"epochs": (1, 2)})
    record = read_record(str(tmp_path))
    assert record == RunRecord(
        "run_pretraining", ARGUMENTS, "complete", preexisting=["thesis.tex"],
        written=["checkpoint-2", "model.safetensors"], environment=software_environment().to_json(),
        results={"metrics": {"loss": 0.5}, "effective_settings": {"epochs": [1, 2]}},
    )  # fmt: skip
    on_disk = json.loads((tmp_path / RUN_FILE).read_text())
    assert list(on_disk) == [
        "script", "arguments", "status", "preexisting", "written", "environment", "metrics", "effective_settings",
    ]  # fmt: skip
    assert on_disk["environment"]["cpu_capability"] and on_disk["environment"]["threads"] >= 1
    assert not (tmp_path / LOCK_FILE).exists() and not run_record._held_locks  # the folder is released
    write_record(str(tmp_path), record)
    assert json.loads((tmp_path / RUN_FILE).read_text()) == on_disk and read_record(str(tmp_path)) == record


def test_a_crash_while_completing_leaves_the_run_unfinished_and_it_resumes(tmp_path, monkeypatch):
    prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=False)
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")  # checkpoint-4 is half-written
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "checkpoint-2" / "model.safetensors"))

    def dies_half_way(record, f, **kwargs):
        f.write('{"script": "run_pretraining", "status": "compl')
        raise OSError("No space left on device")

    monkeypatch.setattr(run_record.json, "dump", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        mark_complete(str(tmp_path), metrics={"loss": 0.5})
    monkeypatch.undo()
    assert read_record(str(tmp_path)).status == "running"  # the record replaced atomically: never half-written
    run_record._release_lock(str(tmp_path))  # the process that held it ended
    resume = prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=False)
    assert resume == str(tmp_path / "checkpoint-2")
    assert os.path.isdir(tmp_path / "checkpoint-4")  # skipped, not deleted


def test_mark_failed_records_the_reason_releases_the_folder_and_the_run_resumes(tmp_path):
    with pytest.raises(KeyError), failures_recorded():
        prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=False)
        (tmp_path / "trainer_state.json").write_text("{}")
        raise KeyError("image")
    record = read_record(str(tmp_path))
    assert (record.status, record.error, record.written) == ("failed", "KeyError: 'image'", ["trainer_state.json"])
    assert list(json.loads((tmp_path / RUN_FILE).read_text()))[-2:] == ["error", "written"]
    assert not (tmp_path / LOCK_FILE).exists() and not run_record._held_locks
    # The same run again: resumed (from the start: no checkpoint), not refused nor its files removed; it runs again,
    # and once complete its record no longer names the earlier failure.
    assert prepare_output_dir(str(tmp_path), "run_pretraining", ARGUMENTS, overwrite=False) is None
    resumed = read_record(str(tmp_path))
    assert (tmp_path / "trainer_state.json").is_file() and (resumed.status, resumed.error) == ("running", None)
    mark_complete(str(tmp_path))
    assert "error" not in json.loads((tmp_path / RUN_FILE).read_text())
    mark_failed(str(tmp_path), "RuntimeError: later")  # a complete run stays complete
    assert read_record(str(tmp_path)).status == "complete"


# ----------------------------------------------------------------------------------------------------------------
# The record's format
# ----------------------------------------------------------------------------------------------------------------


def test_a_record_written_by_an_earlier_version_reads_and_writes_back_unchanged(tmp_path):
    earlier = {  # before `mimir_hf` joined the environment, with results beside the fields
        "script": "run_mimir", "arguments": {"seed": 0}, "status": "complete", "preexisting": [],
        "written": ["finetune", "pretrain"], "environment": {"python": "3.10.12", "torch": "2.3.0", "gpu": None},
        "robust_accuracy": 0.25, "stage_seconds": {"pretraining": 12.5}, "push_to_hub": "failed: offline",
    }  # fmt: skip
    (tmp_path / RUN_FILE).write_text(json.dumps(earlier, indent=2))
    record = read_record(str(tmp_path))
    assert (record.status, record.written, record.error) == ("complete", ["finetune", "pretrain"], None)
    assert record.results == {
        "robust_accuracy": 0.25,
        "stage_seconds": {"pretraining": 12.5},
        "push_to_hub": "failed: offline",
    }
    assert record.to_json() == earlier and list(record.to_json()) == list(earlier)
    assert read_record(str(tmp_path / "elsewhere")) is None


def test_the_records_json_keys_are_their_fields(tmp_path):
    running = RunRecord("run_evaluation", {"seed": 0})
    assert list(running.to_json()) == ["script", "arguments", "status", "preexisting"]  # unset fields left out
    full = RunRecord("run_mimir", {}, "failed", ["a"], error="E", written=["b"], environment={}, results={"seconds": 1})
    assert list(full.to_json()) == [f.name for f in fields(RunRecord) if f.name != "results"] + ["seconds"]
    environment = software_environment()
    assert isinstance(environment, SoftwareEnvironment)
    assert environment.to_json() == {k: v for k, v in asdict(environment).items() if v is not None or k == "gpu"}
    assert "gpu" in environment.to_json()  # null without a GPU, as earlier records have it
    without = SoftwareEnvironment(**{**asdict(environment), "torchattacks": None})
    assert "torchattacks" not in without.to_json() and list(without.to_json())[-1] == "gpu"
    with pytest.raises(ValueError, match=r"named like the record's own fields: \['status'\]"):
        RunRecord("run_evaluation", {}, results={"status": "done"})
    with pytest.raises(ValueError, match="a JSON object, not list"):
        RunRecord.from_json([1, 2])
