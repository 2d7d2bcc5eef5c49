"""Interoperability: remote code in saved folders, the image-classification pipeline, the saved image processor."""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from transformers import pipeline

import mimir_hf.hub as hub_module
from mimir_hf import MimirForImageClassification
from mimir_hf.data import image_processor_for, load_digits_dataset

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
    assert set(config["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForPreTraining",
        "AutoModelForImageClassification",
        "AutoImageProcessor",
    }
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
        from transformers import AutoImageProcessor
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__name__ == "MimirImageProcessor", type(processor)
        assert "mimir_hf" not in sys.modules
        torch.testing.assert_close(model(torch.load(folder + "/x.pt")).logits, torch.load(folder + "/expected.pt"))
        print("OK", type(model).__module__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused:" in result.stdout and "LOADED WITHOUT TRUST" not in result.stdout
    assert "OK transformers_modules" in result.stdout


def test_image_classification_pipeline_on_a_saved_mimir_classifier(tmp_path, monkeypatch):
    """With mimir_hf imported, the registered classes win: no "run custom code?" prompt (pipeline() probes for a
    video processor too, which used to find the image processor's auto_map and ask)."""
    model = saved_classifier(tmp_path, num_channels=1)
    images = [image["image"] for image in load_digits_dataset()["test"].select(range(3))]
    processor_config = json.load(open(tmp_path / "preprocessor_config.json"))
    assert processor_config["num_channels"] == 1 and processor_config["do_normalize"] is False
    assert "image_processor_type" not in processor_config  # found through config.json's auto_map / the registry
    assert json.load(open(tmp_path / "config.json"))["auto_map"]["AutoImageProcessor"] == (
        "image_processing_mimir.MimirImageProcessor"
    )
    assert (tmp_path / "image_processing_mimir.py").is_file()

    def no_questions(*args, **kwargs):
        raise AssertionError(f"pipeline() asked the user: {args}")

    monkeypatch.setattr("builtins.input", no_questions)  # a terminal would show "run custom code? [y/N]"
    classify = pipeline("image-classification", model=str(tmp_path), device="cpu")
    assert type(classify.image_processor).__name__ == "MimirImageProcessor"
    results = classify(images, top_k=4)
    processor = image_processor_for(model.config)
    for image, predictions in zip(images, results, strict=True):
        with torch.no_grad():
            pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
            probabilities = model(pixel_values).logits.softmax(-1)[0]
        assert [p["label"] for p in predictions] == [
            model.config.id2label[i] for i in probabilities.argsort(descending=True).tolist()
        ]
        assert predictions[0]["score"] == pytest.approx(probabilities.max().item(), rel=1e-4)


def http_client():
    """The HTTP client module huggingface_hub uses: httpx2 from 2.x on, httpx in 1.x."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        import httpx

        return httpx


class FakeHub:
    """Stands in for the Hub's HTTP API: records what would be sent, answers like the Hub for uploads."""

    def __init__(self):
        self.commits, self.created = [], []

    def handler(self, request):
        import base64

        httpx = http_client()

        path = request.url.path
        if path.endswith("/api/repos/create"):
            self.created.append(json.loads(request.content)["name"])
            return httpx.Response(200, json={"url": "https://huggingface.co/me/mimir-test"})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx.Response(
                200,
                json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
            )
        if "/commit/" in path:
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            files = {
                line["value"]["path"]: base64.b64decode(line["value"]["content"])
                for line in lines
                if line["key"] == "file"
            }
            self.commits.append(files)
            return httpx.Response(
                200, json={"commitUrl": "https://huggingface.co/me/mimir-test/commit/1", "commitOid": "1" * 40}
            )
        return httpx.Response(200, json={})


@pytest.fixture
def fake_hub(monkeypatch):
    httpx = http_client()
    from huggingface_hub.utils import close_session, set_client_factory

    hub = FakeHub()
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub.handler)))
    close_session()
    yield hub
    set_client_factory(httpx.Client)
    close_session()


def test_model_push_to_hub_sends_safetensors_config_and_code(tmp_path, fake_hub):
    model = MimirForImageClassification(tiny_config())
    model.push_to_hub("me/mimir-test", token="hf_fake_token")
    sent = fake_hub.commits[-1]
    assert {"model.safetensors", "config.json", "modeling_mimir.py", "configuration_mimir.py"} <= set(sent)
    assert json.loads(sent["config.json"])["model_type"] == "mimir"
    assert not any(name.endswith((".bin", ".pth")) for name in sent)


def test_finetuning_script_pushes_weights_processor_and_mimir_card(tmp_path, fake_hub):
    from mimir_hf.commands import finetune as run_finetuning

    run_finetuning.main(
        [
            "--output_dir",
            str(tmp_path / "out"),
            "--max_train_samples",
            "32",
            "--max_eval_samples",
            "8",
            "--num_train_epochs",
            "1",
            "--adversarial_steps",
            "1",
            "--image_size",
            "8",
            "--patch_size",
            "2",
            "--hidden_size",
            "32",
            "--num_hidden_layers",
            "1",
            "--num_attention_heads",
            "2",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
            "--use_cpu",
            "true",
            "--save_strategy",
            "no",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "me/mimir-test",
            "--hub_token",
            "hf_fake_token",
        ]
    )
    assert fake_hub.created and fake_hub.created[0] == "mimir-test"
    sent = fake_hub.commits[-1]
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(sent)
    card = sent["README.md"].decode()
    assert "mimir_hf" in card and "model-index" in card and "PGD-20" in card


def test_importing_mimir_hf_reaches_no_network():
    script = textwrap.dedent(
        """
        import socket
        def refuse(*args, **kwargs):
            raise AssertionError("network access at import time")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import mimir_hf, mimir_hf.attacks, mimir_hf.trainer, mimir_hf.evaluation, mimir_hf.convert, mimir_hf.data
        print("imported")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


TINY_FINETUNE = ["--max_train_samples", "32", "--max_eval_samples", "8", "--num_train_epochs", "1",
                 "--adversarial_steps", "1", "--image_size", "8", "--patch_size", "2", "--hidden_size", "32",
                 "--num_hidden_layers", "1", "--num_attention_heads", "2", "--disable_tqdm", "true", "--report_to",
                 "none", "--save_strategy", "no", "--push_to_hub", "true", "--hub_model_id", "me/mimir-test",
                 "--hub_token", "hf_fake_token"]  # fmt: skip


def one_error_line(capsys, argv) -> str:
    """The one error line of a `mimir-hf` command that must fail (exit status 1, no traceback)."""
    from mimir_hf.commands.cli import main as cli

    capsys.readouterr()
    assert cli(argv) == 1
    errors = capsys.readouterr().err
    lines = [line for line in errors.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in errors, errors[-3000:]
    return lines[0]


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Every request to the Hub fails to connect, as on a machine without network."""
    httpx = http_client()
    from huggingface_hub.utils import close_session, set_client_factory

    def refuse(request):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(refuse)))
    close_session()
    yield
    set_client_factory(httpx.Client)
    close_session()


def test_an_unreachable_hub_is_one_line_and_the_run_is_closed_as_failed(tmp_path, capsys, unreachable_hub):
    out = tmp_path / "out"
    error = one_error_line(capsys, ["finetune", "--output_dir", str(out)] + TINY_FINETUNE)
    assert "The Hugging Face Hub could not be reached for the repository me/mimir-test (ConnectError" in error
    assert "hf auth login" in error and "HF_HUB_OFFLINE=1" in error and "Nothing was trained" in error
    record = json.load(open(out / "mimir_run.json"))
    assert record["status"] == "failed" and "ConnectError" in record["error"]
    assert not (out / ".mimir_run.lock").exists()  # the folder is released: a rerun may start at once


def test_a_failed_upload_after_training_keeps_the_model_and_says_how_to_push_it(tmp_path, capsys, fake_hub):
    def no_commits(request, answer=fake_hub.handler):  # the token may create the repository but not write to it
        if "/commit/" in request.url.path:
            return http_client().Response(403, json={"error": "You don't have the rights to write to me/mimir-test"})
        return answer(request)

    fake_hub.handler = no_commits
    out = tmp_path / "out"
    error = one_error_line(capsys, ["finetune", "--output_dir", str(out)] + TINY_FINETUNE)
    assert f"The model is saved in {out}" in error and f"hf upload me/mimir-test {out}" in error
    record = json.load(open(out / "mimir_run.json"))
    assert record["status"] == "complete" and record["push_to_hub"].startswith("failed: The Hugging Face Hub"), (
        record,
        error,
    )
    assert (out / "model.safetensors").is_file()


def test_push_to_hub_while_offline_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    error = one_error_line(capsys, ["finetune", "--output_dir", str(tmp_path / "out")] + TINY_FINETUNE)
    assert "push_to_hub is set but HF_HUB_OFFLINE=1" in error and "hf upload" in error
    assert not (tmp_path / "out").exists()


@pytest.fixture
def silent_hub(monkeypatch):
    """A Hub endpoint that accepts connections and never answers (a dead proxy, a black-holed route)."""
    import socket
    import threading

    import huggingface_hub
    from huggingface_hub.utils import close_session

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(64)], daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr("mimir_hf.hub.HUB_ANSWER_SECONDS", 1.0)
    close_session()
    yield
    server.close()
    close_session()


def test_a_hub_that_never_answers_costs_seconds_and_names_the_offline_way(tmp_path, capsys, silent_hub):
    import time

    start = time.time()
    error = one_error_line(capsys, ["evaluate", "--model_name_or_path", "someone/robust-vit", "--output_dir",
                                    str(tmp_path / "report")])  # fmt: skip
    assert "The Hugging Face Hub (http://127.0.0.1:" in error and "does not answer" in error
    assert "someone/robust-vit would be read from it" in error and "HF_HUB_OFFLINE=1" in error
    error = one_error_line(capsys, ["pretrain", "--dataset_name", "someone/photos", "--output_dir",
                                    str(tmp_path / "pre")])  # fmt: skip
    assert "someone/photos would be read from it" in error
    error = one_error_line(capsys, ["finetune", "--output_dir", str(tmp_path / "out")] + TINY_FINETUNE)
    assert "The Hugging Face Hub could not be reached for the repository me/mimir-test" in error
    assert time.time() - start < 30  # three refusals, each after the 1 s the Hub is given here (5 s by default)


def test_hub_errors_turns_a_network_failure_into_one_line_and_lets_other_errors_through(monkeypatch):
    """`hub_errors` alone, without a Trainer or network: the Hub answers (`hub_problem` is None), the block fails."""
    monkeypatch.setattr(hub_module, "hub_problem", lambda: None)
    args = SimpleNamespace(hub_model_id="me/mimir-test", output_dir="/runs/out")
    with pytest.raises(ValueError, match=r"repository me/mimir-test \(ConnectionError: refused\)") as raised:
        with hub_module.hub_errors(args, trained=True):
            raise ConnectionError("refused\nsecond line")
    assert "hf upload me/mimir-test /runs/out" in str(raised.value) and raised.value.__suppress_context__
    with pytest.raises(ValueError, match="Nothing was trained"):
        with hub_module.hub_errors(SimpleNamespace(hub_model_id=None, output_dir="/runs/out"), trained=False):
            raise TimeoutError("slow")
    with pytest.raises(KeyError):  # not the Hub's: unchanged
        with hub_module.hub_errors(args, trained=True):
            raise KeyError("labels")
    monkeypatch.setattr(hub_module, "hub_problem", lambda: ConnectionError("no answer"))  # found before the block runs
    with pytest.raises(ValueError, match=r"repository out \(ConnectionError: no answer\)"):
        with hub_module.hub_errors(SimpleNamespace(hub_model_id=None, output_dir="/runs/out"), trained=True):
            pytest.fail("the block runs although the Hub does not answer")
