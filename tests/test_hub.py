"""Interoperability: remote code in saved folders, the image-classification pipeline, the saved image processor."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import pipeline

from mimir_hf import MimirForImageClassification
from mimir_hf.data import image_processor_for, load_digits_dataset, to_pixel_values

from .conftest import tiny_config


def saved_classifier(path, **overrides):
    names = ["cat", "dog", "owl", "emu"]
    config = tiny_config(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}, **overrides)
    model = MimirForImageClassification(config).eval()
    model.classifier.weight.data.normal_(std=0.5)
    model.save_pretrained(path)
    image_processor_for(config).save_pretrained(path)
    return model


def test_saved_folder_carries_auto_map_and_code_and_loads_without_mimir_hf(tmp_path):
    model = saved_classifier(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_mimir.MimirForImageClassification"
    assert {"modeling_mimir.py", "configuration_mimir.py", "mutual_information.py"} <= set(os.listdir(tmp_path))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "mimir_hf" or name.startswith("mimir_hf."):
                    raise ImportError("mimir_hf is not installed here")
        sys.meta_path.insert(0, Block())
        import torch
        from transformers import AutoModelForImageClassification
        folder = {str(tmp_path)!r}
        try:
            AutoModelForImageClassification.from_pretrained(folder)
            print("LOADED WITHOUT TRUST")
        except Exception as error:
            print("refused:", type(error).__name__)
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert "mimir_hf" not in sys.modules
        torch.testing.assert_close(model(torch.load(folder + "/x.pt")).logits, torch.load(folder + "/expected.pt"))
        print("OK", type(model).__module__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused:" in result.stdout and "LOADED WITHOUT TRUST" not in result.stdout
    assert "OK transformers_modules" in result.stdout


def test_image_classification_pipeline_on_a_saved_mimir_classifier(tmp_path):
    model = saved_classifier(tmp_path, num_channels=1)
    images = [image["image"] for image in load_digits_dataset()["test"].select(range(3))]
    processor_config = json.load(open(tmp_path / "preprocessor_config.json"))
    assert processor_config["num_channels"] == 1 and processor_config["do_normalize"] is False
    assert processor_config["auto_map"]["AutoImageProcessor"] == "image_processing_mimir.MimirImageProcessor"
    assert (tmp_path / "image_processing_mimir.py").is_file()
    classify = pipeline("image-classification", model=str(tmp_path), device="cpu")
    assert type(classify.image_processor).__name__ == "MimirImageProcessor"
    results = classify(images, top_k=4)
    for image, predictions in zip(images, results, strict=True):
        with torch.no_grad():
            probabilities = model(to_pixel_values(image, (16, 16), 1)[None]).logits.softmax(-1)[0]
        assert [p["label"] for p in predictions] == [model.config.id2label[i] for i in probabilities.argsort(descending=True).tolist()]
        assert predictions[0]["score"] == pytest.approx(probabilities.max().item(), rel=1e-4)


def test_image_processor_feeds_exactly_the_training_pixels():
    config = tiny_config(num_channels=1)
    processor = image_processor_for(config)
    for row in load_digits_dataset()["test"].select(range(5)):
        from_processor = processor(images=row["image"], return_tensors="pt")["pixel_values"][0]
        assert torch.equal(from_processor, to_pixel_values(row["image"], (16, 16), 1))
