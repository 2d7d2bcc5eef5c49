"""The README's "Use a pre-trained MIMIR model" code runs as written (on local stand-ins for the demo's outputs)."""

import os
import re

import torch
import transformers

from mimir_hf import MimirForImageClassification, MimirForPreTraining
from mimir_hf.data import image_processor_for

from .conftest import tiny_config
from .reference_mae import ReferenceViT
from .test_hub import fake_hub  # noqa: F401  (fixture: the Hub's HTTP API replaced)

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def section_code(title: str) -> str:
    text = open(README).read()
    section = text.split(f"## {title}")[1].split("\n## ")[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


def test_use_a_pretrained_mimir_model_section_runs(tmp_path, monkeypatch, fake_hub):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    names = [str(d) for d in range(10)]
    config = tiny_config(
        num_channels=1, num_labels=10, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    MimirForImageClassification(config).save_pretrained("outputs/demo/finetune")
    image_processor_for(config).save_pretrained("outputs/demo/finetune")
    MimirForPreTraining(tiny_config(num_channels=1)).save_pretrained("outputs/demo/pretrain")
    fields = {k: v for k, v in tiny_config().to_dict().items() if k in transformers.ViTMAEConfig().to_dict()}
    transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**fields)).save_pretrained("outputs/vit-mae-tiny")
    reference = ReferenceViT(image=32, patch=2, dim=192, depth=1, heads=3, mlp=768, classes=10)
    torch.save({"model": reference.state_dict()}, "mimir_vit_tiny_cifar10.pth")
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")

    namespace: dict = {}
    exec(compile(section_code("Use a pre-trained MIMIR model"), "README.md", "exec"), namespace)

    assert namespace["classify"].model.config.model_type == "mimir"
    assert isinstance(namespace["encoder"], MimirForImageClassification)
    assert isinstance(namespace["mae_start"], MimirForPreTraining)
    assert namespace["converted"].config.num_attention_heads == 3
    assert os.path.isfile("outputs/mimir-vit-tiny-cifar10/model.safetensors")
    assert "model.safetensors" in fake_hub.commits[-1]


def test_released_numbers_agree_in_the_readme_and_the_family_cards():
    """README and model_cards/<family>.md quote the authors' numbers from mimir_hf/released.py, the one table."""
    from mimir_hf.released import RELEASED

    readme = open(README).read()
    for checkpoint in RELEASED:
        card = open(os.path.join(os.path.dirname(README), "model_cards", f"{checkpoint.family}.md")).read()
        pair = f"{checkpoint.natural:.2f} / {checkpoint.robust:.2f} {checkpoint.robust_attack}"
        row = f"| {checkpoint.natural:.2f} | {checkpoint.robust:.2f} ({checkpoint.robust_attack})"
        assert row in card, (checkpoint, "model card")
        assert pair in readme, (checkpoint, "README")
