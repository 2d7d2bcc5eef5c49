"""Paper-scale training pieces: the base learning rate, the weight EMA, auxiliary data in every batch."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mimir_hf import MimirForImageClassification, MimirForPreTraining
from mimir_hf.auxiliary_data import AuxiliaryImages, MixedBatchSampler, RealAndAuxiliary, load_npz
from mimir_hf.data import image_processor_for, pixel_transform
from mimir_hf.ema import EMA_FILE, WeightEMA
from mimir_hf.trainer import MimirAdversarialTrainer, MimirPreTrainingArguments, MimirPreTrainingTrainer

from .conftest import tiny_config
from .test_trainer import arguments, dataset


def write_npz(path, n=30, size=16, classes=4, seed=0):
    rng = np.random.RandomState(seed)
    np.savez(path, image=rng.randint(0, 256, (n, size, size, 3), dtype=np.uint8), label=np.arange(n) % classes)
    return str(path)


def test_learning_rate_is_the_base_rate_times_the_effective_batch(tmp_path):
    args = arguments(
        tmp_path,
        learning_rate=None,
        base_learning_rate=0.05,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=2,
    )
    assert args.effective_batch_size() == 64 and args.effective_batch_size(world_size=4) == 256
    assert args.scaled_learning_rate() == pytest.approx(0.05 * 64 / 256)
    assert args.scaled_learning_rate(world_size=2) == pytest.approx(0.05 * 128 / 256)
    ares = arguments(
        tmp_path, learning_rate=None, base_learning_rate=5e-4, base_batch_size=512, per_device_train_batch_size=64
    )
    assert ares.scaled_learning_rate(world_size=8) == pytest.approx(5e-4)
    trainer = MimirAdversarialTrainer(model=MimirForImageClassification(tiny_config()), args=args)
    assert trainer.args.learning_rate == pytest.approx(0.0125)
    trainer.create_optimizer()
    assert max(group["lr"] for group in trainer.optimizer.param_groups) == pytest.approx(0.0125)
    assert arguments(tmp_path).scaled_learning_rate() == arguments(tmp_path).learning_rate  # no base rate: as given
    with pytest.raises(ValueError, match="base_learning_rate must be > 0"):
        arguments(tmp_path, learning_rate=None, base_learning_rate=-1.0)


def test_weight_ema_is_the_exponential_average_of_the_steps():
    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(model, decay=0.9)
    history = [model.weight.detach().clone()]
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        history.append(model.weight.detach().clone())
        ema.update(model)
    expected = history[0]
    for weights in history[1:]:
        expected = 0.9 * expected + 0.1 * weights
    assert torch.allclose(ema.weights["weight"], expected, atol=1e-6)
    own = model.weight.detach().clone()
    with ema.applied(model):
        assert torch.allclose(model.weight, expected, atol=1e-6)
    assert torch.equal(model.weight, own)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        WeightEMA(model, 1.0)


def test_trainer_keeps_saves_and_resumes_the_ema(tmp_path):
    args = arguments(tmp_path, num_train_epochs=4, ema_decay=0.5, save_strategy="steps", save_steps=2)
    torch.manual_seed(0)
    trainer = MimirAdversarialTrainer(
        model=MimirForImageClassification(tiny_config()), args=args, train_dataset=dataset()
    )
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert os.path.isfile(tmp_path / "checkpoint-2" / EMA_FILE)
    final = trainer.model.state_dict()
    name = "classifier.weight"
    assert not torch.equal(trainer.ema.weights[name], final[name]) and not torch.equal(
        trainer.ema.weights[name], start[name]
    )
    folder = trainer.save_ema_model()
    assert folder == str(tmp_path / "ema")
    ema_model = MimirForImageClassification.from_pretrained(folder)
    assert torch.allclose(ema_model.state_dict()[name], trainer.ema.weights[name])
    assert torch.equal(trainer.model.state_dict()[name], final[name])  # the trainer's model keeps its own weights

    # Resumed from checkpoint-2, the EMA continues from the one saved there and ends where the first run's did.
    saved = load_file(str(tmp_path / "checkpoint-2" / EMA_FILE))
    torch.manual_seed(0)
    resumed = MimirAdversarialTrainer(
        model=MimirForImageClassification(tiny_config()), args=args, train_dataset=dataset()
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert torch.allclose(resumed.ema.weights[name], trainer.ema.weights[name], atol=1e-6)
    assert not torch.allclose(saved[name], trainer.ema.weights[name])
    os.remove(tmp_path / "checkpoint-2" / EMA_FILE)  # a checkpoint saved without an EMA
    with pytest.raises(ValueError, match="checkpoint-2.ema.safetensors is missing"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_npz_checks_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        load_npz(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "keys.npz", images=np.zeros((2, 4, 4, 3), np.uint8), label=np.zeros(2))
    with pytest.raises(ValueError, match="has no \\['image'\\] array"):
        load_npz(str(tmp_path / "keys.npz"))
    np.savez(tmp_path / "float.npz", image=np.zeros((2, 4, 4, 3)), label=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="must be uint8"):
        load_npz(str(tmp_path / "float.npz"))
    ragged = np.empty(2, dtype=object)  # images of two sizes, saved as Python objects
    ragged[0], ragged[1] = np.zeros((4, 4, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)
    np.savez(tmp_path / "objects.npz", image=ragged, label=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"objects.npz: 'image' is an object array .*np.stack the images"):
        load_npz(str(tmp_path / "objects.npz"))
    path = write_npz(tmp_path / "ok.npz", classes=7)
    with pytest.raises(ValueError, match="labels must be in \\[0, 4\\)"):
        AuxiliaryImages(path, pixel_transform("image", "label", image_processor_for(tiny_config())), num_labels=4)


def _pixels_as_arrays(batch: dict) -> dict:
    return {"pixel_values": [np.asarray(image) for image in batch["image"]], "labels": batch["label"]}


def test_uncompressed_aux_images_are_memory_mapped_not_copied(tmp_path, caplog):
    """The 5M EDM images are 15 GB: an np.savez file is mapped (shared between processes, pickled as its path), a
    compressed one is read into memory with a warning, and both give the same pixels."""
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    transform = pixel_transform("image", "label", image_processor_for(tiny_config()))
    np.savez(tmp_path / "stored_C.npz", image=pixels, label=np.arange(64) % 4)
    images, labels = load_npz(str(tmp_path / "stored_C.npz"))
    assert isinstance(images, np.memmap) and not images.flags.writeable
    np.testing.assert_array_equal(images, pixels)
    np.testing.assert_array_equal(labels, np.arange(64) % 4)
    with zipfile.ZipFile(
        tmp_path / "no_suffix.npz", "w"
    ) as archive:  # members named without ".npy" (np.load reads them)
        for name, array in (("image", pixels), ("label", np.arange(64) % 4)):
            with archive.open(name, "w") as member:
                np.save(member, array)
    images, _ = load_npz(str(tmp_path / "no_suffix.npz"))
    assert isinstance(images, np.memmap)
    np.testing.assert_array_equal(images, pixels)
    # Fortran order: one image would be scattered over the whole file, so it is read (with the warning), not mapped.
    np.savez(tmp_path / "fortran.npz", image=np.asfortranarray(pixels), label=np.arange(64) % 4)
    with caplog.at_level("WARNING", logger="mimir_hf.auxiliary_data"):
        images, _ = load_npz(str(tmp_path / "fortran.npz"))
    assert not isinstance(images, np.memmap) and "read into memory" in caplog.text
    np.testing.assert_array_equal(images, pixels)
    caplog.clear()
    stored = AuxiliaryImages(str(tmp_path / "stored_C.npz"), transform)
    picklable = AuxiliaryImages(str(tmp_path / "stored_C.npz"), _pixels_as_arrays)  # (a closure does not pickle)
    assert len(pickle.dumps(picklable)) < pixels.nbytes / 10  # the path travels, not the 48 KiB of pixels
    unpickled = pickle.loads(pickle.dumps(picklable))
    assert isinstance(unpickled.images, np.memmap)
    np.testing.assert_array_equal(unpickled[5]["pixel_values"], pixels[5])

    np.savez_compressed(tmp_path / "compressed.npz", image=pixels, label=np.arange(64) % 4)
    with caplog.at_level("WARNING", logger="mimir_hf.auxiliary_data"):
        compressed = AuxiliaryImages(str(tmp_path / "compressed.npz"), transform)
    assert not isinstance(compressed.images, np.memmap) and "read into memory" in caplog.text
    torch.testing.assert_close(compressed[5]["pixel_values"], stored[5]["pixel_values"])

    (tmp_path / "not_a_zip.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="is not an .npz archive"):
        load_npz(str(tmp_path / "not_a_zip.npz"))


def test_aux_images_go_through_the_real_data_transform(tmp_path):
    path = write_npz(tmp_path / "aux.npz", size=8)
    aux = AuxiliaryImages(path, pixel_transform("image", "label", image_processor_for(tiny_config())))
    example = aux[3]
    assert example["pixel_values"].shape == (3, 16, 16) and example["labels"] == 3  # resized to the model's 16 px
    images, _ = load_npz(path)
    assert example["pixel_values"].max() <= 1 and example["pixel_values"].mean() == pytest.approx(
        images[3].mean() / 255, abs=0.02
    )
    both = RealAndAuxiliary(dataset(8), aux)
    batch = both.__getitems__([9, 0, 8, 7])
    assert [e["labels"] for e in batch] == [1, 0, 0, 3] and all(isinstance(e["labels"], int) for e in batch)


@pytest.mark.parametrize("batch_size, fraction, aux_per_batch", [(32, 0.7, 22), (128, 0.7, 89), (256, 0.7, 179)])
def test_mixed_batches_take_the_authors_share_of_auxiliary_examples(batch_size, fraction, aux_per_batch):
    sampler = MixedBatchSampler(50_000, 5_000, batch_size, fraction, seed=0)
    assert sampler.num_aux_per_batch == aux_per_batch  # the authors' examples: 10 + 22, 39 + 89, 77 + 179
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-50_000 // batch_size)
    assert all(len(b) == batch_size and sum(i >= 50_000 for i in b) == aux_per_batch for b in batches)


def test_mixed_batches_under_data_parallelism_share_no_real_image():
    kwargs = dict(num_real=100, num_auxiliary=40, batch_size=10, aux_fraction=0.7, seed=3, world_size=2)
    ranks = [MixedBatchSampler(rank=rank, **kwargs) for rank in (0, 1)]
    assert [len(sampler) for sampler in ranks] == [5, 5]  # ceil(100 / (10 x 2)): the real data sets the epoch
    real = [[i for batch in sampler for i in batch if i < 100] for sampler in ranks]
    assert len(real[0]) == len(set(real[0])) == 15 and not set(real[0]) & set(real[1])
    auxiliary = [[i for batch in sampler for i in batch if i >= 100] for sampler in ranks]
    assert all(len(a) == 35 and min(a) >= 100 and max(a) < 140 for a in auxiliary)
    assert auxiliary[0] != auxiliary[1]  # each process draws its own
    assert list(ranks[0]) == list(MixedBatchSampler(rank=0, **kwargs))  # same seed, same batches
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != list(MixedBatchSampler(rank=0, **kwargs))


@pytest.mark.parametrize("trainer_class", [MimirAdversarialTrainer, MimirPreTrainingTrainer])
def test_trainers_draw_each_batch_from_real_and_auxiliary_data(tmp_path, trainer_class):
    pretraining = trainer_class is MimirPreTrainingTrainer
    model = (MimirForPreTraining if pretraining else MimirForImageClassification)(tiny_config())
    extra = {} if pretraining else {"adversarial_steps": 1}
    args = arguments(tmp_path, pretraining=pretraining, num_train_epochs=2, logging_steps=1, **extra)
    aux = AuxiliaryImages(
        write_npz(tmp_path / "aux.npz"), pixel_transform("image", "label", image_processor_for(tiny_config()))
    )
    trainer = trainer_class(model=model, args=args, train_dataset=dataset(16), aux_dataset=aux)
    loader = trainer.get_train_dataloader()
    assert len(loader) == 2  # ceil(16 real / 8): the real data sets the epoch
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (8, 3, 16, 16) and batch["labels"].dtype == torch.long
    trainer.train()
    assert trainer.state.global_step == 4
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(np.isfinite(entry["loss"]) for entry in logged)
    json.dumps(trainer.args.to_dict())  # the run's arguments (aux_fraction included) serialise


def test_every_learning_rate_says_where_it_came_from_and_none_falls_back_silently(tmp_path):
    """Neither rate given: the class's documented base rate (not transformers' 5e-5); one given: that one; both:
    refused, naming the fix."""
    pre = MimirPreTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=64)
    assert pre.scaled_learning_rate() == pytest.approx(1.5e-4 * 64 / 256)
    assert pre.learning_rate_rule() == (
        "base_learning_rate 0.00015 (MimirPreTrainingArguments's default: MIMIR and MAE pre-training's blr) x "
        "effective batch 64 / base_batch_size 256"
    )
    fine = arguments(tmp_path, learning_rate=None, per_device_train_batch_size=128)
    assert fine.scaled_learning_rate() == pytest.approx(1e-3 * 128 / 256) and "default" in fine.learning_rate_rule()
    given = arguments(tmp_path, learning_rate=2e-3)
    assert given.scaled_learning_rate() == 2e-3 and given.learning_rate_rule() == "learning_rate, as given"
    base = arguments(tmp_path, learning_rate=None, base_learning_rate=0.05, per_device_train_batch_size=32)
    assert base.learning_rate_rule() == "base_learning_rate 0.05 x effective batch 32 / base_batch_size 256"
    with pytest.raises(ValueError, match="Both learning_rate .* and base_learning_rate .* are set; give one"):
        arguments(tmp_path, learning_rate=1e-3, base_learning_rate=0.05)
    trainer = MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), args=pre)
    trainer.create_optimizer()  # the optimizer gets the rule's rate, not 5e-5
    assert max(group["lr"] for group in trainer.optimizer.param_groups) == pytest.approx(1.5e-4 * 64 / 256)
