"""The two Trainer subclasses: a few steps run, log their parts and lower the loss; optimizer groups; accumulation."""

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments
from transformers.testing_utils import CaptureLogger

from mimir_hf import AttackBudget, MimirForImageClassification, MimirForPreTraining
from mimir_hf.attacks import pgd_attack
from mimir_hf.checkpoints import logger as checkpoints_logger
from mimir_hf.optimizer_groups import parameter_groups
from mimir_hf.trainer import (
    MimirAdversarialTrainer,
    MimirAdversarialTrainingArguments,
    MimirPreTrainingArguments,
    MimirPreTrainingTrainer,
)

from .conftest import tiny_config


def fixed_batch(n=8):
    """Images whose class sets their brightness (classes 0.2 apart, well beyond eps = 8/255), plus noise."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    images = 0.2 + 0.2 * labels.view(-1, 1, 1, 1) + 0.1 * torch.rand(n, 3, 16, 16, generator=generator)
    return images, labels


def dataset(n=8):
    images, labels = fixed_batch(n)
    return Dataset.from_dict({"pixel_values": images.numpy(), "labels": labels.numpy()}).with_format("torch")


def arguments(tmp_path, pretraining=False, **overrides):
    """Training arguments for the tests: `MimirPreTrainingArguments` or `MimirAdversarialTrainingArguments` (PGD-3
    with step 4/255), no warm-up and no layer decay, so a few steps show progress."""
    fields = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=30,
        learning_rate=3e-3,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        warmup_steps=0,
        layer_decay=1.0,
    )
    if not pretraining:
        fields.update(adversarial_steps=3, adversarial_step_size=4 / 255)
    fields.update(overrides)
    return (MimirPreTrainingArguments if pretraining else MimirAdversarialTrainingArguments)(**fields)


def arguments_for(trainer_class, tmp_path, **overrides):
    return arguments(tmp_path, pretraining=trainer_class is MimirPreTrainingTrainer, **overrides)


def test_pretraining_trainer_logs_its_parts_and_lowers_the_loss(tmp_path):
    config = tiny_config()
    model = MimirForPreTraining(config)
    images, _ = fixed_batch()
    noise = torch.rand(8, config.num_patches, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.eval()(images, noise=noise).reconstruction_loss
    trainer = MimirPreTrainingTrainer(model=model, args=arguments(tmp_path, True), train_dataset=dataset())
    trainer.train()
    with torch.no_grad():
        after = model.eval()(images, noise=noise).reconstruction_loss
    assert after < 0.8 * before
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all("reconstruction_loss" in entry and "mi_loss" in entry for entry in logged)
    assert logged[-1]["loss"] < logged[0]["loss"]
    # loss = reconstruction + 1e-5 * MI, logged as means over the same steps
    entry = logged[0]
    assert entry["loss"] == pytest.approx(entry["reconstruction_loss"] + 1e-5 * entry["mi_loss"], rel=1e-3)


@pytest.mark.parametrize("method", ["pgd", "trades", "mart", "none"])
def test_adversarial_trainer_lowers_the_robust_loss(tmp_path, method):
    torch.manual_seed(0)
    model = MimirForImageClassification(tiny_config())
    images, labels = fixed_batch()

    def robust_loss():
        model.eval()
        budget = AttackBudget(8 / 255, 4 / 255, 3)
        adversarial = pgd_attack(model, images, labels, budget, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            return F.cross_entropy(model(adversarial).logits, labels)

    before = robust_loss()
    trainer = MimirAdversarialTrainer(
        model=model, args=arguments(tmp_path, adversarial_method=method, learning_rate=1e-2), train_dataset=dataset()
    )
    trainer.train()
    assert robust_loss() < 0.8 * before
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    expected = {"pgd": {"adversarial_accuracy"}, "none": {"natural_accuracy"}}.get(
        method, {"adversarial_accuracy", "natural_accuracy"}
    )
    assert all(expected <= set(entry) for entry in logged)


def test_evaluate_runs_the_attack_under_no_grad(tmp_path):
    model = MimirForImageClassification(tiny_config())
    trainer = MimirAdversarialTrainer(model=model, args=arguments(tmp_path), eval_dataset=dataset())
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_adversarial_accuracy"} <= set(metrics)
    assert 0 <= metrics["eval_adversarial_accuracy"] <= 100  # in %, like every accuracy mimir_hf reports


def test_gradient_accumulation_gives_the_same_update(tmp_path):
    def train(batch, accumulation):
        torch.manual_seed(0)
        model = MimirForImageClassification(tiny_config())
        args = arguments(
            tmp_path,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            num_train_epochs=1,
            adversarial_method="none",
            learning_rate=1e-2,
        )
        MimirAdversarialTrainer(model=model, args=args, train_dataset=dataset()).train()
        return model.state_dict()

    whole, accumulated = train(8, 1), train(4, 2)
    for name in whole:
        torch.testing.assert_close(whole[name], accumulated[name], rtol=1e-4, atol=1e-6, msg=name)


def test_optimizer_groups_layer_decay_and_no_weight_decay():
    model = MimirForImageClassification(tiny_config())  # 2 layers -> ids 0 (embeddings), 1, 2, 3 (head)
    groups = parameter_groups(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    by_parameter = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())

    def group(name):
        return by_parameter[id(named[name])]

    assert group("classifier.weight")["lr"] == 1.0
    assert group("vit.layers.1.mlp.fc1.weight")["lr"] == 0.5
    assert group("vit.layers.0.mlp.fc1.weight")["lr"] == 0.25
    assert group("vit.embeddings.patch_embeddings.projection.weight")["lr"] == 0.125
    assert group("vit.embeddings.cls_token")["weight_decay"] == 0.0
    assert group("vit.layers.0.attention.q_proj.bias")["weight_decay"] == 0.0
    assert group("fc_norm.weight")["weight_decay"] == 0.0
    assert group("vit.layers.0.attention.q_proj.weight")["weight_decay"] == 0.05
    assert "vit.embeddings.position_embeddings" not in {n for n, p in named.items() if id(p) in by_parameter}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def decays(groups) -> dict[int, bool]:
    return {id(p): g["weight_decay"] > 0 for g in groups for p in g["params"]}


def test_pretraining_decays_the_tokens_as_the_authors_do():
    """The authors' pre-training builds AdamW with timm's param_groups_weight_decay and no exclusion list: every
    matrix and token decays (class and mask tokens included), vectors never; the fixed sin-cos positions train not."""
    model = MimirForPreTraining(tiny_config())
    by_parameter = decays(parameter_groups(model, learning_rate=1.0, weight_decay=0.05))
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    expected = {name: p.ndim > 1 and not name.endswith(".bias") for name, p in named.items()}
    assert {name: by_parameter[id(p)] for name, p in named.items()} == expected
    assert expected["vit.embeddings.cls_token"] and expected["decoder.mask_token"]
    assert "vit.embeddings.position_embeddings" not in named and "decoder.decoder_pos_embed" not in named


def swin_layer_ids_by_hand(name: str, depths: list[int]) -> int:
    """SimMIM's Swin fine-tuning ids, written from its description for the names of a 2-stage model: the patch
    embedding 0; block b of stage s: blocks of earlier stages + b + 1; a stage's patch merging: the id of the stage's
    last block; the rest (final norm, head): sum(depths) + 1."""
    parts = name.split(".")
    if parts[1] == "embeddings":
        return 0
    if parts[1] == "encoder":
        stage = int(parts[3])
        if parts[4] == "downsample":
            return sum(depths[: stage + 1])
        return sum(depths[:stage]) + int(parts[5]) + 1
    return sum(depths) + 1


def test_swin_gets_simmim_layer_ids_and_a_model_without_ids_is_refused_layer_decay():
    from transformers import ViTConfig, ViTForImageClassification

    from mimir_hf import MimirSwinConfig, MimirSwinForImageClassification

    depths = [1, 2]
    config = MimirSwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=depths, num_heads=[2, 2], window_size=4)
    model = MimirSwinForImageClassification(config)
    groups = parameter_groups(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay = decays(groups)
    top = sum(depths) + 1
    for name, parameter in model.named_parameters():
        assert lr[id(parameter)] == 0.5 ** (top - swin_layer_ids_by_hand(name, depths)), name
        # ARES (timm's optimizer) decays the relative-position tables like any matrix
        assert decay[id(parameter)] == (parameter.ndim > 1), name
    assert len(set(lr.values())) == top + 1  # 0 .. top all used

    plain = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=64, image_size=16, patch_size=4))  # fmt: skip
    with pytest.raises(ValueError, match="layer_decay=0.65 needs a model that says which layer.*--layer_decay 1.0"):
        parameter_groups(plain, learning_rate=1.0, weight_decay=0.05, layer_decay=0.65)
    assert len(parameter_groups(plain, learning_rate=1.0, weight_decay=0.05)) == 2  # decay or not, one rate


def test_effective_batch_of_a_recipe_is_kept_or_refused_naming_the_flags(tmp_path):
    arguments(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=4, reference_effective_batch=32)
    with pytest.raises(ValueError) as error:
        arguments(tmp_path, per_device_train_batch_size=8, reference_effective_batch=32, learning_rate=None,
                  base_learning_rate=0.05)  # fmt: skip
    message = str(error.value)
    assert "effective batch of 32" in message
    assert "this run's is 8 (per device 8 x accumulation 1 x 1 processes)" in message
    assert "--gradient_accumulation_steps 4" in message and "--per_device_train_batch_size 32" in message
    assert "--reference_effective_batch 0 to train at 8 (learning rate 0.0015625" in message
    arguments(tmp_path, per_device_train_batch_size=8, reference_effective_batch=0)


def test_no_clipping_by_default_and_fp16_on_a_cpu_is_refused_naming_the_fix(tmp_path):
    assert arguments(tmp_path).max_grad_norm == 0  # the authors never clip
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU.*--fp16 false.*--bf16 true"):
        arguments(tmp_path, fp16=True)
    with pytest.raises(ValueError, match="max_grad_norm must be >= 0"):
        arguments(tmp_path, max_grad_norm=-1.0)


def test_label_smoothing_factor_is_refused_with_the_field_to_use(tmp_path):
    model = MimirForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="label_smoothing_factor=0.3 is not.*config's label_smoothing \\(0.1"):
        MimirAdversarialTrainer(model=model, args=arguments(tmp_path, label_smoothing_factor=0.3), train_dataset=[])
    MimirAdversarialTrainer(model=model, args=arguments(tmp_path, label_smoothing_factor=0.1), train_dataset=[])


def test_bad_training_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="adversarial_method.*pgd"):
        arguments(tmp_path, adversarial_method="fast")
    with pytest.raises(ValueError, match="adversarial_epsilon.*\\[0, 1\\]"):
        arguments(tmp_path, adversarial_epsilon=2.0)
    with pytest.raises(ValueError, match="adversarial_steps.*integer >= 1"):
        arguments(tmp_path, adversarial_steps=0)
    with pytest.raises(TypeError, match="takes MimirAdversarialTrainingArguments"):
        MimirAdversarialTrainer(
            model=MimirForImageClassification(tiny_config()),
            args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
        )


def test_pretraining_trainer_refuses_adversarial_arguments_it_would_ignore(tmp_path):
    """One arguments class per trainer: MimirPreTrainingTrainer has no adversarial_* fields to ignore silently."""
    with pytest.raises(TypeError, match="takes MimirPreTrainingArguments.*adversarial_method"):
        MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), args=arguments(tmp_path))
    assert not hasattr(arguments(tmp_path, True), "adversarial_epsilon")
    with pytest.raises(TypeError):
        MimirPreTrainingArguments(output_dir=str(tmp_path), adversarial_epsilon=4 / 255)


def dtypes_seen_by(model):
    """The dtypes the first attention projection computes in, over every forward pass (the attacks' included)."""
    seen = []
    model.vit.layers[0].attention.q_proj.register_forward_hook(lambda module, inputs, out: seen.append(out.dtype))
    return seen


def fp16_as_on_a_gpu(args):
    """The arguments refuse fp16 on a CPU (Accelerate would train in fp32), so the GPU case is simulated: fp16 is
    switched on after they are checked, and `with_grad_scaler` gives the trainer what a GPU's Accelerator has."""
    args.fp16, args.mixed_precision = True, "fp16"
    return args


def with_grad_scaler(trainer):
    """What the Accelerator does for fp16 on a GPU -- autocast to float16 and a dynamic GradScaler -- on the CPU, so
    the fp16 path (scaled backward, skipped steps on overflow) runs in CI."""
    trainer.accelerator.native_amp = True
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    return trainer


TRAINERS = [(MimirPreTrainingTrainer, MimirForPreTraining), (MimirAdversarialTrainer, MimirForImageClassification)]


@pytest.mark.parametrize("trainer_class, model_class", TRAINERS)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_both_trainers_train_under_mixed_precision(tmp_path, trainer_class, model_class, precision):
    """`bf16=True` runs every forward pass (the attack's included) under bf16 autocast; `fp16=True`, given the
    Accelerator's GPU set-up (float16 autocast + GradScaler), under float16 with a scaled backward. Both lower the loss
    on the fixed batch and keep every weight finite."""
    torch.manual_seed(0)
    model = model_class(tiny_config())
    seen = dtypes_seen_by(model)
    if precision == "fp16":
        args = fp16_as_on_a_gpu(arguments_for(trainer_class, tmp_path))
    else:
        args = arguments_for(trainer_class, tmp_path, bf16=True)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset())
    if precision == "fp16":
        with_grad_scaler(trainer)
    trainer.train()
    assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float16}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) >= 2 and all(map(math.isfinite, losses)) and losses[-1] < losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path):
    """An interrupted run resumed from its checkpoint ends where an uninterrupted one does (masks and attack noise
    come from the RNG state Trainer checkpoints)."""

    class KillAfterStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_training_stop = True

    def run(output_dir, callbacks=(), resume=None):
        torch.manual_seed(0)
        model = MimirForPreTraining(tiny_config())
        args = arguments(
            output_dir, True, max_steps=4, per_device_train_batch_size=4, save_strategy="steps", save_steps=2
        )
        trainer = MimirPreTrainingTrainer(model=model, args=args, train_dataset=dataset(16), callbacks=list(callbacks))
        trainer.train(resume_from_checkpoint=resume)
        return model.state_dict()

    straight = run(tmp_path / "straight")
    killed = run(tmp_path / "interrupted", callbacks=[KillAfterStep2()])
    assert any(not torch.equal(straight[name], killed[name]) for name in straight)
    resumed = run(tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-2"))
    for name in straight:
        torch.testing.assert_close(straight[name], resumed[name], msg=name)


@pytest.mark.parametrize(
    "model_class, trainer_class",
    [(MimirForPreTraining, MimirPreTrainingTrainer), (MimirForImageClassification, MimirAdversarialTrainer)],
)
def test_gradient_checkpointing_through_training_arguments_gives_the_same_weights(tmp_path, model_class, trainer_class):
    def train(checkpointing):
        torch.manual_seed(0)
        model = model_class(tiny_config(drop_path_rate=0.1))
        args = arguments_for(
            trainer_class, tmp_path, max_steps=3, per_device_train_batch_size=4, gradient_checkpointing=checkpointing
        )
        trainer_class(model=model, args=args, train_dataset=dataset()).train()
        assert model.is_gradient_checkpointing == checkpointing
        return model.state_dict()

    plain, checkpointed = train(False), train(True)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


class FlakyTrainer(MimirAdversarialTrainer):
    """Turns the loss of chosen steps into NaN, as an fp16 overflow or a bad batch would."""

    nan_steps: set = set()

    def mimir_loss(self, model, inputs):
        loss, outputs = super().mimir_loss(model, inputs)
        if self.state.global_step in self.nan_steps:
            loss = loss * float("nan")
        return loss, outputs


class Snapshots(TrainerCallback):
    def __init__(self):
        self.weights = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fp16_scaler", [False, True])
def test_a_nonfinite_loss_skips_its_step_and_training_goes_on(tmp_path, fp16_scaler):
    """Also with fp16's GradScaler, where a step without gradients would make the scaler fail: there the scaler skips
    the step and halves its scale."""
    model = MimirForImageClassification(tiny_config())
    snapshots = Snapshots()
    FlakyTrainer.nan_steps = {2}
    args = arguments(tmp_path, max_steps=5, per_device_train_batch_size=4)
    if fp16_scaler:
        fp16_as_on_a_gpu(args)
    trainer = FlakyTrainer(model=model, args=args, train_dataset=dataset(), callbacks=[snapshots])
    if fp16_scaler:
        with_grad_scaler(trainer)
    trainer.train()
    if fp16_scaler:
        assert trainer.accelerator.scaler.get_scale() == 2.0**9
    assert trainer.state.global_step == 5 and trainer.nonfinite_stop is None
    before, after = snapshots.weights[2], snapshots.weights[3]  # step 3 is the one computed at global_step 2
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(after[k], snapshots.weights[4][k]) for k in after)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_too_many_nonfinite_losses_in_a_row_stop_training_with_a_message(tmp_path):
    model = MimirForImageClassification(tiny_config())
    FlakyTrainer.nan_steps = {1, 2, 3, 4, 5, 6, 7}
    trainer = FlakyTrainer(
        model=model,
        args=arguments(tmp_path, max_steps=20, per_device_train_batch_size=4, max_consecutive_nonfinite=3),
        train_dataset=dataset(),
    )
    trainer.train()
    assert trainer.state.global_step == 4
    assert "after 3 non-finite losses in a row" in trainer.nonfinite_stop
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_same_seed_same_pretraining_loss_curve(tmp_path):
    def curve():
        torch.manual_seed(0)
        trainer = MimirPreTrainingTrainer(
            model=MimirForPreTraining(tiny_config()),
            args=arguments(tmp_path, True, max_steps=4, per_device_train_batch_size=4, logging_steps=1),
            train_dataset=dataset(),
        )
        trainer.train()
        return [(e["loss"], e["mi_loss"]) for e in trainer.state.log_history if "loss" in e]

    first, second = curve(), curve()
    assert len(first) == 4 and first == second


def test_a_checkpoint_lacking_what_its_resume_needs_is_skipped_for_the_previous_one(tmp_path):
    """Complete = every file an exact resume reads, the marker written last: a checkpoint without optimizer.pt, one
    killed while its marker was written (only the .tmp), and in an EMA run one without (or with a truncated)
    ema.safetensors are each skipped, naming the file, for the previous complete checkpoint; given by path, refused."""
    import shutil

    from mimir_hf.checkpoints import COMPLETE_MARKER, last_complete_checkpoint, resume_needs

    torch.manual_seed(0)
    model = MimirForPreTraining(tiny_config())
    args = arguments(tmp_path / "run", True, max_steps=4, per_device_train_batch_size=4, save_strategy="steps",
                     save_steps=2, ema_decay=0.9)  # fmt: skip
    trainer = MimirPreTrainingTrainer(model=model, args=args, train_dataset=dataset(16))
    trainer.train()
    needs = resume_needs(args)
    assert set(needs) == {COMPLETE_MARKER, "rng_state", "optimizer.pt", "scheduler.pt", "ema.safetensors"}
    run, newest, previous = tmp_path / "run", tmp_path / "run" / "checkpoint-4", str(tmp_path / "run" / "checkpoint-2")
    assert last_complete_checkpoint(str(run), needs) == str(newest)
    pristine = tmp_path / "pristine"
    shutil.copytree(newest, pristine)

    def damaged(change) -> str:
        shutil.rmtree(newest)
        shutil.copytree(pristine, newest)
        change(newest)
        with CaptureLogger(checkpoints_logger) as captured:
            chosen = last_complete_checkpoint(str(run), needs)
        return chosen, captured.out

    cases = {
        "optimizer.pt is missing": lambda f: (f / "optimizer.pt").unlink(),
        f"{COMPLETE_MARKER} is missing": lambda f: (f / COMPLETE_MARKER).rename(f / (COMPLETE_MARKER + ".tmp")),
        "ema.safetensors is missing": lambda f: (f / "ema.safetensors").unlink(),
        "ema.safetensors cannot be read": lambda f: (f / "ema.safetensors").write_bytes(
            (f / "ema.safetensors").read_bytes()[:100]
        ),
    }
    for message, change in cases.items():
        chosen, log = damaged(change)
        assert chosen == previous and message in log, (message, chosen, log)
    with pytest.raises(ValueError, match="Cannot resume from .*checkpoint-4: .*ema.safetensors cannot be read"):
        MimirPreTrainingTrainer(model=model, args=args, train_dataset=dataset(16)).train(
            resume_from_checkpoint=str(newest)
        )
