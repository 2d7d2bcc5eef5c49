"""The output folder of a run and its record, `mimir_run.json`.

What this module guarantees for a command's `--output_dir`:

- Nothing a user owns is deleted. An output folder that is, contains or sits inside an input (data, model, cache) is
  refused whatever the flags (`check_outside_inputs`). A folder without `mimir_run.json` was not made by a mimir_hf
  run and is never emptied; `--overwrite_output_dir` on a folder holding another run deletes only what that run wrote
  there (`RunRecord.written`; what was in the folder before it, `RunRecord.preexisting`, is kept).
- One run per folder: a run holds an exclusive lock on its folder (`lock_output_dir`) until it ends, and a second run
  on the same folder stops at once, naming the holder.
- A half-written run is never presented as complete: the record says `"running"` from the start and `"complete"` only
  once every output file is written (`mark_complete` writes it last, atomically, with the `SoftwareEnvironment`); a
  run that stops with an error says `"failed"` and why (`mark_failed`, `failures_recorded`).
- An unfinished run resumes: the same command on the same folder (same script, same arguments: `run_identity`)
  continues from the last complete checkpoint (`mimir_hf.checkpoints`).

The record's JSON keys are the `RunRecord` fields (those left unset are left out, as earlier versions wrote them),
followed by the results a command adds (`RunRecord.results`, e.g. `metrics`, `effective_settings`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

from mimir_hf.checkpoints import last_complete_checkpoint

# The commands' logger: `setup_logging` sets its level, so these lines show as the commands' own.
logger = logging.getLogger("mimir_hf.commands")

RUN_FILE = "mimir_run.json"  # the marker: a folder without it was not made by these scripts and is never emptied
LOCK_FILE = ".mimir_run.lock"
_held_locks: dict[str, object] = {}  # output dir -> open lock file, held until the run ends or the process does

# Metadata of a field that is left out of the JSON while it is None (records of earlier versions lack it too).
_OMITTED_WHEN_NONE = {"omitted_when_none": True}


def _to_json(record) -> dict:
    """`asdict(record)` without the fields marked `_OMITTED_WHEN_NONE` that are None."""
    unset = {f.name for f in fields(record) if f.metadata.get("omitted_when_none") and getattr(record, f.name) is None}
    return {name: value for name, value in asdict(record).items() if name not in unset}


def _jsonable(value):
    """`value` as it reads back from JSON (tuples become lists, other objects their `str`)."""
    return json.loads(json.dumps(value, default=str))


# ----------------------------------------------------------------------------------------------------------------
# The records
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftwareEnvironment:
    """What produced a run's numbers besides its arguments: library versions, the CPU (torch picks its kernels by the
    CPU's instruction set, so the same run can train to other weights on another CPU), threads and GPU."""

    mimir_hf: str
    python: str
    torch: str
    transformers: str
    datasets: str
    numpy: str
    machine: str
    cpu: str  # the first CPU's model name, with its family and model numbers when /proc/cpuinfo gives them
    cpu_capability: str  # torch's kernel set on this CPU (e.g. AVX2)
    threads: int
    gpu: str | None  # the first CUDA device's name; None (null in the JSON) without one
    torchattacks: str | None = field(default=None, metadata=_OMITTED_WHEN_NONE)  # None: not installed

    def to_json(self) -> dict:
        return _to_json(self)


def _cpu_name() -> str:
    """The first CPU's model name (with its family and model numbers) from /proc/cpuinfo, else `platform`'s."""
    import platform

    cpu = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family", "model") and key.strip() not in cpu:  # the first CPU's
                    cpu[key.strip()] = value.strip()
    name = cpu.get("model name") or platform.processor() or "unknown"
    if "cpu family" in cpu:
        name += f" (family {cpu['cpu family']}, model {cpu.get('model', '?')})"
    return name


def software_environment() -> SoftwareEnvironment:
    """This process's `SoftwareEnvironment`."""
    import importlib.metadata
    import platform

    import datasets
    import numpy
    import torch
    import transformers

    import mimir_hf

    torchattacks = None
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        torchattacks = importlib.metadata.version("torchattacks")
    return SoftwareEnvironment(
        mimir_hf=mimir_hf.__version__, python=platform.python_version(), torch=torch.__version__,
        transformers=transformers.__version__, datasets=datasets.__version__, numpy=numpy.__version__,
        machine=platform.machine(), cpu=_cpu_name(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
        threads=torch.get_num_threads(), gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        torchattacks=torchattacks,
    )  # fmt: skip


@dataclass
class RunRecord:
    """What `mimir_run.json` holds: which run made the folder, how far it got, and what it wrote there."""

    script: str  # the command that made the run: run_pretraining, run_finetuning, run_evaluation, run_mimir
    arguments: dict  # the arguments that define the run (`run_identity`), as JSON
    status: Literal["running", "complete", "failed"] = "running"
    preexisting: list[str] = field(default_factory=list)  # what was in the folder before the run: never its to delete
    error: str | None = field(default=None, metadata=_OMITTED_WHEN_NONE)  # why a failed run stopped, one line
    # What the run wrote into the folder (its top-level entries), listed when it completes or fails; None: the run
    # stopped before it could list them.
    written: list[str] | None = field(default=None, metadata=_OMITTED_WHEN_NONE)
    environment: dict | None = field(default=None, metadata=_OMITTED_WHEN_NONE)  # `SoftwareEnvironment.to_json()`
    results: dict = field(default_factory=dict)  # what the command adds (metrics, settings, ...): top-level keys

    def __post_init__(self):
        if shadowed := sorted(set(self.results) & {f.name for f in fields(self)}):
            raise ValueError(f"A run's results cannot be named like the record's own fields: {shadowed}.")

    def to_json(self) -> dict:
        """The record as `mimir_run.json` holds it: the fields (the unset ones left out), then the results."""
        record = _to_json(self)
        results = record.pop("results")
        return {**record, **results}

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        """A record from `mimir_run.json` as any version wrote it: keys that are not fields are results. One without
        `script` or `arguments` (not a mimir_hf run's) reads as the record of another run."""
        if not isinstance(data, dict):
            raise ValueError(f"A run record is a JSON object, not {type(data).__name__}.")
        names = {f.name for f in fields(cls)} - {"results"}
        known = {name: value for name, value in data.items() if name in names}
        known.setdefault("script", "")
        known.setdefault("arguments", {})
        return cls(**known, results={name: value for name, value in data.items() if name not in names})

    def is_run(self, script: str, arguments: dict) -> bool:
        """Whether this is the record of the run `script` with `arguments` (as JSON)."""
        return self.script == script and self.arguments == arguments


def read_record(output_dir: str) -> RunRecord | None:
    """The run record of `output_dir`; None when it has none (a folder no mimir_hf run made)."""
    if not os.path.isfile(os.path.join(output_dir, RUN_FILE)):
        return None
    return _load(output_dir)


def _load(output_dir: str) -> RunRecord:
    with open(os.path.join(output_dir, RUN_FILE)) as f:
        return RunRecord.from_json(json.load(f))


def write_record(output_dir: str, record: RunRecord) -> None:
    """Write `record` as `output_dir`'s `mimir_run.json`, atomically: a reader sees the old record or the new one."""
    run_file = os.path.join(output_dir, RUN_FILE)
    with open(run_file + ".tmp", "w") as f:
        json.dump(record.to_json(), f, indent=2)
    os.replace(run_file + ".tmp", run_file)


# ----------------------------------------------------------------------------------------------------------------
# One run per folder: the lock
# ----------------------------------------------------------------------------------------------------------------


def _launch() -> str | None:
    """The identity of this process's launch (torchrun's run id, or the rendezvous address), if launched."""
    if os.environ.get("TORCHELASTIC_RUN_ID") not in (None, "", "none"):
        return os.environ["TORCHELASTIC_RUN_ID"]
    if "MASTER_ADDR" in os.environ:
        return f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '')}"
    return None


def lock_output_dir(output_dir: str) -> None:
    """Hold an exclusive lock on `output_dir` until the run ends (`mark_complete`, `mark_failed`) or this process
    does: a second run on the same folder stops with a message naming the holder (the lock file says who it is)
    instead of resuming from the first one's checkpoints and writing the same files."""
    import fcntl

    key = os.path.realpath(output_dir)
    if key in _held_locks:
        return
    handle = open(os.path.join(output_dir, LOCK_FILE), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(_in_use(output_dir, holder)) from None
    handle.seek(0)
    handle.truncate()
    launch = f", launch {_launch()}, rank {os.environ.get('RANK', 0)}" if _launch() else ""
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}{launch}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()
    _held_locks[key] = handle


def _in_use(output_dir: str, holder: str) -> str:
    """Why `output_dir` cannot be locked, `holder` holding it: another run, or a sibling process of this launch."""
    launch = _launch()
    if launch and f"launch {launch}," in holder:
        return (
            f"--output_dir {output_dir} is held by another process of this same launch ({holder}): the processes "
            "did not form one process group, so each one took itself for the only one. Launch with `torchrun "
            "--nproc_per_node N` or `accelerate launch --multi_gpu --num_processes N`, which set up the group."
        )
    return (
        f"--output_dir {output_dir} is in use by another run ({holder}); wait for it to finish or choose another "
        "directory."
    )


def _release_lock(output_dir: str) -> None:
    """Release the folder (a finished run leaves no lock file behind; a crashed one leaves a stale file that the next
    run simply locks again)."""
    handle = _held_locks.pop(os.path.realpath(output_dir), None)
    if handle is not None:
        with contextlib.suppress(OSError):
            os.remove(handle.name)
        handle.close()


# ----------------------------------------------------------------------------------------------------------------
# Starting a run: the folder checked, locked, and a previous run's files replaced or resumed
# ----------------------------------------------------------------------------------------------------------------

# What these scripts write into an output folder (a folder that is not a mimir_hf run keeps everything else).
_OUTPUT_NAMES = (
    "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "generation_config.json",
    "training_args.bin", "trainer_state.json", "all_results.json", "train_results.json", "eval_results.json",
    "finetune_results.json", "reconstructions.png", "robustness.json", "robustness.md", "robust_accuracy_vs_eps.png",
    "comparison.md", "comparison.json", RUN_FILE,
)  # fmt: skip
_OUTPUT_PATTERNS = ("checkpoint-", "runs", "pretrain", "finetune", "report")

# The arguments that only say where or how a run goes, not which run it is.
_WHERE_OR_HOW = {
    "output_dir", "overwrite_output_dir", "logging_dir", "resume_from_checkpoint", "push_to_hub", "hub_token",
    "disable_tqdm", "report_to", "logging_steps", "dataloader_num_workers",
}  # fmt: skip


def run_identity(*argument_objects) -> dict:
    """The arguments that define a run (for the output-dir guard), without the ones that only say where or how."""
    merged = {}
    for obj in argument_objects:
        merged.update({k: v for k, v in asdict(obj).items() if k not in _WHERE_OR_HOW})
    return merged


def _collisions(output_dir: str) -> list[str]:
    """The entries of `output_dir` named like what these scripts write."""
    return sorted(
        name for name in os.listdir(output_dir)
        if name in _OUTPUT_NAMES or name.startswith(_OUTPUT_PATTERNS) or name.endswith(".py")
    )  # fmt: skip


def _relation(output_dir: str, path: str) -> str | None:
    """How `output_dir` overlaps the input `path`: "is", "contains", "is inside", or None."""
    output, other = os.path.realpath(output_dir), os.path.realpath(path)
    if output == other:
        return "is"
    if other.startswith(output + os.sep):
        return "contains"
    if output.startswith(other + os.sep):
        return "is inside"
    return None


def check_outside_inputs(output_dir: str, inputs: list[str]) -> None:
    """Refuse an output folder that is, contains or sits inside an input (data, model, cache): writing or cleaning
    it would touch the user's data."""
    for path in inputs:
        if path and os.path.exists(path) and (relation := _relation(output_dir, path)):
            raise ValueError(
                f"--output_dir {output_dir} {relation} the input {path}; a run's outputs must go to a folder of their "
                "own, outside your data, models and caches. Choose another --output_dir."
            )


def prepare_output_dir(
    output_dir: str,
    script: str,
    arguments: dict,
    overwrite: bool,
    inputs: tuple[str, ...] = (),
    resume_needs: tuple[str, ...] = (),
) -> str | None:
    """Check, lock and prepare `output_dir`; returns a checkpoint to resume from when it holds this same, unfinished
    run (the last *complete* one: see `mimir_hf.checkpoints`).

    - It must not be, contain or sit inside any of `inputs` (refused whatever the flags).
    - A folder holding another mimir_hf run (it has `mimir_run.json`): refused unless `overwrite`, which deletes only
      what that run wrote there (what was in the folder before it is kept).
    - A folder of something else (no `mimir_run.json`) is never emptied: refused, or with `overwrite` reused for the
      new run's files as long as none of them would replace one of its files.
    - A second run on a folder in use stops at once (see `lock_output_dir`).
    """
    arguments = _jsonable(arguments)
    check_outside_inputs(output_dir, [path for path in inputs if path])
    os.makedirs(output_dir, exist_ok=True)
    held_before = os.path.realpath(output_dir) in _held_locks
    lock_output_dir(output_dir)
    try:
        return _prepare_locked(output_dir, script, arguments, overwrite, resume_needs)
    except BaseException:
        if not held_before:  # refused: the folder is not this run's, so no failure of it is recorded there
            _release_lock(output_dir)
        raise


def _prepare_locked(
    output_dir: str, script: str, arguments: dict, overwrite: bool, resume_needs: tuple[str, ...]
) -> str | None:
    """`prepare_output_dir` once the folder is locked: resume, refuse, or clear the previous run and record this one."""
    entries = [name for name in os.listdir(output_dir) if name != LOCK_FILE]
    previous = read_record(output_dir)
    same = previous is not None and previous.is_run(script, arguments)
    if same and previous.status != "complete":
        checkpoint = last_complete_checkpoint(output_dir, resume_needs)
        logger.info(f"{output_dir} holds this run, unfinished: resuming from {checkpoint or 'the start'}.")
        write_record(output_dir, replace(previous, status="running", error=None))  # the failure is past
        return checkpoint
    if previous is None:
        _check_foreign_folder(output_dir, entries, overwrite)
        preexisting = entries
    else:
        preexisting = _remove_previous_run(output_dir, entries, previous, same, overwrite)
    write_record(output_dir, RunRecord(script, arguments, preexisting=preexisting))
    return None


def _check_foreign_folder(output_dir: str, entries: list[str], overwrite: bool) -> None:
    """Refuse a folder no mimir_hf run made that holds anything (`entries`), unless `overwrite`; even then, refuse it
    when this run would replace one of its files."""
    if not entries:
        return
    if not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} already holds files of something else ({', '.join(sorted(entries)[:5])}"
            f"{', ...' if len(entries) > 5 else ''}); choose an empty or new directory. (Nothing in it was "
            "changed. --overwrite_output_dir would write this run's files beside them, never deleting any.)"
        )
    if collisions := _collisions(output_dir):
        raise ValueError(
            f"--output_dir {output_dir} holds files this run would replace ({', '.join(collisions[:8])}) and that "
            "no mimir_hf run wrote; choose another directory (nothing in it was changed)."
        )


def _remove_previous_run(
    output_dir: str, entries: list[str], previous: RunRecord, same: bool, overwrite: bool
) -> list[str]:
    """Delete what the `previous` run wrote into `output_dir` (refused for another run without `overwrite`); returns
    what stays: the folder's entries that run did not write."""
    if same:
        logger.info(f"{output_dir} holds this run, complete: running it again.")
    elif not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} already holds a {previous.script} run with other arguments. Pass "
            "--overwrite_output_dir to replace that run's files (files that were in the folder before it are "
            "kept), or choose another directory."
        )
    earlier = set(previous.preexisting)
    # A run stopped before it could list its files: only the names these scripts write are its.
    ours = (set(_collisions(output_dir)) if previous.written is None else set(previous.written)) - earlier
    ours.add(RUN_FILE)
    for name in sorted(ours & set(entries)):  # the previous run's files only (inputs are never inside them)
        path = os.path.join(output_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    preexisting = sorted(set(entries) - ours)
    if added := sorted(set(preexisting) - earlier):
        logger.info(f"Kept in {output_dir} what the earlier run did not write: {', '.join(added[:8])}.")
    return preexisting


# ----------------------------------------------------------------------------------------------------------------
# Ending a run: complete, failed, or results added afterwards
# ----------------------------------------------------------------------------------------------------------------


def _written(output_dir: str, record: RunRecord) -> list[str]:
    """What this run wrote into `output_dir` (its top-level entries that were not there before it): what a rerun or
    --overwrite_output_dir may remove, and nothing else."""
    before = set(record.preexisting) | {LOCK_FILE, RUN_FILE}
    return sorted(set(os.listdir(output_dir)) - before)


def mark_complete(output_dir: str, **results) -> None:
    """Flag the run as complete, with `results` (as JSON) and the `SoftwareEnvironment`: written last, after every
    output file (atomically); then release the folder."""
    record = _load(output_dir)
    write_record(output_dir, replace(
        record, status="complete", error=None, written=_written(output_dir, record),
        environment=software_environment().to_json(), results={**record.results, **_jsonable(results)},
    ))  # fmt: skip
    _release_lock(output_dir)


def mark_failed(output_dir: str, reason: str) -> None:
    """Close a run this process holds, unfinished, as failed (with `reason`, one line), and release its folder; a
    rerun of the same run resumes it as it would an interrupted one. A record that cannot be read is left as it is."""
    with contextlib.suppress(OSError, ValueError):
        record = _load(output_dir)
        if record.status != "complete":
            write_record(
                output_dir, replace(record, status="failed", error=reason, written=_written(output_dir, record))
            )
    _release_lock(output_dir)


def add_results(output_dir: str, **results) -> None:
    """Add `results` (as JSON) to the record of `output_dir`'s run, leaving its status as it is."""
    record = _load(output_dir)
    write_record(output_dir, replace(record, results={**record.results, **_jsonable(results)}))


@contextlib.contextmanager
def failures_recorded():
    """Around a command: if it stops with an error, every run folder this process holds is marked failed (never left
    "running"), naming the error."""
    try:
        yield
    except BaseException as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        for folder in list(_held_locks):
            mark_failed(folder, reason)
        raise
