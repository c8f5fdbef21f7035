"""--compile: the UNet step through torch.compile, exact to the eager run, compiled before the first step, once per bucket size.

TorchInductor's code generation takes minutes even for the tiny model on a fresh machine, so these tests
use torch's "aot_eager" backend: the same dynamo capture, guards, recompiles and AOT-autograd forward and
backward graphs, run without generated kernels. Inductor itself is measured by ``python -m bench --variants compile``.
"""
from __future__ import annotations

import pytest
import torch

from core import compiling
from core.errors import TrainerError
from core.lora import LoRASettings
from core.training import Trainer, TrainSettings
from training_support import aspect_dataset

QUICK = dict(steps=4, resolution=64, batch_size=1, learning_rate=1e-3, seed=3, lr_scheduler="constant")


@pytest.fixture(autouse=True)
def traced_without_code_generation(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def run(base, dataset, **settings):
    return Trainer(base, dataset, LoRASettings(rank=4, dropout=0.1), TrainSettings(**{**QUICK, **settings}), device="cpu").run()


def test_a_compiled_run_trains_the_same_lora_and_times_its_compile(base_model, dataset):
    eager = run(base_model, dataset)
    compiled = run(base_model, dataset, compile=True)
    assert eager.compiled_graphs is None and "compile" not in eager.phase_seconds
    assert compiled.phase_seconds["compile"] > 0, "the compile before the first step is its own phase"
    assert compiled.compiled_graphs == 1 and compiled.summary()["compiled_graphs"] == 1
    # The compile pass draws nothing from the run's streams: noise, timesteps and LoRA dropout are the eager run's.
    assert compiled.loss_history == pytest.approx(eager.loss_history, rel=1e-5, abs=1e-7)
    for name, tensor in eager.lora.tensors.items():
        torch.testing.assert_close(compiled.lora.tensors[name], tensor, rtol=1e-5, atol=1e-7)


def test_buckets_compile_once_per_size_never_per_step(base_model, tmp_path):
    dataset = aspect_dataset(tmp_path / "aspects", [(256, 256), (512, 256), (256, 512), (768, 256), (256, 768), (320, 256)], resolution=256)
    trainer = Trainer(base_model, dataset, LoRASettings(rank=4), TrainSettings(**{**QUICK, "steps": 9, "resolution": 256}, bucket=True, compile=True))
    shapes = []
    original = trainer.images.batch

    def record(indices, rng):
        latents, size_ids = original(indices, rng)
        shapes.append(tuple(latents.shape[-2:]))
        return latents, size_ids

    trainer.images.batch = record
    result = trainer.run()
    step_shapes = shapes[1:]  # shapes[0] is the compile pass's, the first step's size
    assert len(set(step_shapes)) >= 5, "the run met several bucket sizes"
    # Static shapes: one graph per size, compiled when the size first comes; sizes seen again reuse theirs
    # (torch's default limit of 8 graphs is raised to the run's number of sizes).
    assert result.compiled_graphs == len(set(step_shapes)) < len(step_shapes), (result.compiled_graphs, step_shapes)


def test_a_compiler_that_fails_ends_the_run_in_one_sentence(base_model, dataset, monkeypatch):
    def no_compiler(graph, example_inputs):
        raise RuntimeError("Compiler: cl is not found.")

    monkeypatch.setattr(compiling, "BACKEND", no_compiler)
    with pytest.raises(TrainerError, match=r"torch.compile could not compile the UNet \(.*cl is not found.*\)\. Turn compile off"):
        run(base_model, dataset, compile=True)
