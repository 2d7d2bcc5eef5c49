"""Run by test_reliability.py in a subprocess: a few MIMIR pre-training steps with a checkpoint every 2 steps.

`python checkpoint_worker.py OUTPUT_DIR RESULT_FILE [KILL_AT]`: with KILL_AT = N the process SIGKILLs itself half-way
through writing checkpoint-N's optimizer state (a crash or a power cut during a checkpoint write); with RESUME=1 in
the environment it resumes from the last checkpoint (`resume_from_checkpoint=True`). The final weights go to
RESULT_FILE.
"""

import os
import signal
import sys

import torch
from datasets import Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mimir_hf import MimirForPreTraining
from mimir_hf.trainer import MimirPreTrainingArguments, MimirPreTrainingTrainer
from tests.conftest import tiny_config

output_dir, result_file = sys.argv[1], sys.argv[2]
kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None

if kill_at is not None:
    original_save = torch.save

    def dying_save(obj, path, *args, **kwargs):
        if str(path).endswith(os.path.join(f"checkpoint-{kill_at}", "optimizer.pt")):
            original_save(obj, path, *args, **kwargs)
            with open(path, "r+b") as f:  # only half of the file reached the disk
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return original_save(obj, path, *args, **kwargs)

    torch.save = dying_save

torch.manual_seed(0)
images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
dataset = Dataset.from_dict({"pixel_values": images.numpy()}).with_format("torch")
args = MimirPreTrainingArguments(
    output_dir=output_dir, per_device_train_batch_size=4, max_steps=6, save_strategy="steps", save_steps=2,
    logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, seed=0, learning_rate=1e-3,
)  # fmt: skip
trainer = MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), args=args, train_dataset=dataset)
result = trainer.train(resume_from_checkpoint=True if os.environ.get("RESUME") else None)
torch.save({"state": trainer.model.state_dict(), "train_loss": result.training_loss}, result_file)
