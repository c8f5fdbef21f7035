"""Opt-in ``torch.compile`` of the denoiser's training step (``--compile``).

The UNet (inside DistributedDataParallel when several processes train) is compiled with
TorchInductor. The first compile happens before the first step, on the first batch's shapes,
and is timed as its own phase ("compile"). Shapes are static: each aspect-ratio bucket size is
compiled once, the first time a batch of that size comes, and never again (torch's recompile
limit is raised to the run's number of sizes). Dynamic shapes would serve every size from two
graphs, but Inductor's CPU code generation failed on them (torch 2.13, SD1.5 at 256 px).
``compiled_graphs`` counts the graphs. A compiled run leaves its convolutions and linears to
Inductor: the CPU kernels of ``core.cpu_kernels`` choose by input shape, and Inductor cannot
lower their oneDNN linear op in training.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from .errors import TrainerError

# The torch.compile backend: TorchInductor generates fused kernels (C++ on the CPU, Triton on CUDA).
# Tests swap in "aot_eager", which traces the same forward and backward graphs without generating code.
BACKEND = "inductor"


def compiled(module: torch.nn.Module) -> Any:
    return torch.compile(module, backend=BACKEND, dynamic=False)


def compiled_graphs() -> int:
    """Graphs torch has compiled in this process so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextmanager
def compile_errors():
    """A failed compile (no C++ compiler, no Triton, an unsupported device) ends the run in one sentence."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError

    try:
        yield
    except (BackendCompilerFailed, InductorError) as error:
        cause = getattr(error, "inner_exception", None) or error  # the backend's own error, under dynamo's wrapper
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        raise TrainerError(
            f"torch.compile could not compile the UNet ({type(cause).__name__}: {first_line}). Turn compile off (it is "
            "optional); if a compiler is missing, it needs gcc or clang on the CPU (MSVC's cl.exe on Windows) and Triton on CUDA."
        ) from None


def compile_before_first_step(trainer, step: int) -> None:
    """Compiles the UNet's forward and backward on the shapes of ``step``'s first micro-batch, timed as the
    "compile" phase, then drops the gradients: the run's own draws, adapters and optimizer are untouched."""
    import torch._dynamo

    from .seeding import generator

    plan = trainer.plan
    sizes = len({plan.bucket_of(index) for index in range(len(plan.dataset.entries))}) if trainer.settings.bucket else 1
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, sizes + 1)
    indices = plan.batch_indices(step, 0)
    rng = generator(trainer.settings.seed, step, 0xC0)  # a stream of its own
    trainer.models.train_mode(True)  # as the steps call it: a graph traced in eval mode would be traced again
    with trainer.timer("compile"):
        latents, size_ids = trainer.images.batch(indices, rng)
        text = trainer.captions.batch(indices, trainer.models.forward_text_encoders)
        with trainer.group.no_sync(trainer.models.wrapped(), False):  # no gradient exchange for gradients thrown away
            trainer.batch_loss(trainer.models.forward_unet, latents, text, size_ids, rng, part=indices.part).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
