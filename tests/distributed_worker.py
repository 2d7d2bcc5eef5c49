"""Run under torchrun by test_distributed.py: a few MIMIR pre-training steps with DDP (gloo) on CPU.

Each rank writes a checksum of its final weights to $CHECKSUM_DIR. Each rank gets its own output dir
(`<dir>/rank<N>`), so the test can see that rank 1 writes nothing there.
"""

import faulthandler
import json
import os
import sys

import torch
from datasets import Dataset
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mimir_hf import MimirForPreTraining
from mimir_hf.commands.common import end_processes
from mimir_hf.trainer import MimirPreTrainingArguments, MimirPreTrainingTrainer
from tests.conftest import tiny_config

faulthandler.enable()  # a fatal signal (SIGABRT, SIGSEGV) prints every thread's Python stack to stderr

output_dir = os.path.join(sys.argv[1], f"rank{os.environ['RANK']}")
checksum_dir = os.environ["CHECKSUM_DIR"]
torch.manual_seed(0)
images = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
dataset = Dataset.from_dict({"pixel_values": images.numpy()}).with_format("torch")
args = MimirPreTrainingArguments(
    output_dir=output_dir,
    per_device_train_batch_size=4,
    max_steps=4,
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    disable_tqdm=True,
    ddp_backend="gloo",
    max_consecutive_nonfinite=int(os.environ.get("MAX_NONFINITE", "5")),
)


class FlakyOnRank1(MimirPreTrainingTrainer):
    """Rank 1 alone gets a NaN loss at the steps listed in $NAN_ON_RANK1_AT_STEPS (a bad batch on one device)."""

    nan_steps = {int(step) for step in os.environ.get("NAN_ON_RANK1_AT_STEPS", "").split(",") if step}

    def mimir_loss(self, model, inputs):
        loss, outputs = super().mimir_loss(model, inputs)
        if self.args.process_index == 1 and self.state.global_step in self.nan_steps:
            loss = loss * float("nan")
        return loss, outputs


snapshots = {}


class Snapshot(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        snapshots[state.global_step] = float(
            torch.cat([p.detach().flatten() for p in model.parameters()]).double().sum()
        )


trainer = FlakyOnRank1(
    model=MimirForPreTraining(tiny_config()), args=args, train_dataset=dataset, callbacks=[Snapshot()]
)
trainer.train()
trainer.save_model()
weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
record = {
    "world_size": args.world_size,
    "checksum": float(weights.double().sum()),
    "norm": float(weights.double().norm()),
    "mi_losses": [entry["mi_loss"] for entry in trainer.state.log_history if "mi_loss" in entry],
    "steps": trainer.state.global_step,
    "snapshots": snapshots,
    "nonfinite_stop": trainer.nonfinite_stop,
}
with open(os.path.join(checksum_dir, f"rank{args.process_index}.json"), "w") as f:
    json.dump(record, f)
# Meet at a barrier, then tear the process group down before interpreter shutdown does, as `mimir-hf` does.
end_processes(completed=True)
