"""Checks every MIMIR model family's tests run the same way: a saved folder loaded in a fresh process where mimir_hf
cannot be imported (only the folder's own code, through `trust_remote_code=True`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

BLOCK_MIMIR_HF = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mimir_hf":
            raise ImportError("mimir_hf is not installed here")
sys.meta_path.insert(0, Block())
"""


def outputs_match_without_mimir_hf(tmp_path, cases: list[tuple[str, str, torch.Tensor, torch.Tensor]]) -> None:
    """For each `(auto_class, folder, pixels, expected)`, load `folder` with `transformers.<auto_class>` and
    `trust_remote_code=True` in a fresh process that cannot import mimir_hf, and check that its output (`logits`)
    on `pixels` equals `expected` to 1e-5 (a fresh process may pick other CPU kernels). Pre-training models are called
    with `noise=` the uniform noise saved next to the pixels."""
    lines = [BLOCK_MIMIR_HF, "import torch, transformers"]
    for index, (auto_class, folder, pixels, expected) in enumerate(cases):
        torch.save({"pixels": pixels, "expected": expected}, tmp_path / f"case{index}.pt")
        lines.append(
            textwrap.dedent(
                f"""
                case = torch.load({str(tmp_path / f"case{index}.pt")!r})
                model = transformers.{auto_class}.from_pretrained({folder!r}, trust_remote_code=True).eval()
                assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
                inputs = case["pixels"]
                with torch.no_grad():
                    if isinstance(inputs, tuple):
                        out = model(inputs[0], noise=inputs[1], compute_mi_loss=False).logits
                    else:
                        out = model(inputs).logits
                diff = (out - case["expected"]).abs().max().item()
                assert diff <= 1e-5, f"{folder}: outputs differ by {{diff}}"
                """
            )
        )
    lines.append("assert 'mimir_hf' not in sys.modules, 'the package was imported'")
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(lines)], check=False, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
