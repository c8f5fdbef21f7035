"""The models a run trains: the denoiser and text encoders with adapters, on the training device.

The caller's base model is left as it was found: where a module must change device or
dtype it is copied (built on the meta device and filled on the target, so the CPU never
holds two full copies), and adapters added to modules used in place are removed again.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from . import lora as lora_lib
from .base_model import BaseModel
from .compiling import compiled
from .cpu_kernels import ALL_KERNELS, CpuKernelChoice, enter_training_kernels
from .devices import trim_freed_memory
from .distributed import SINGLE, ProcessGroup
from .families import ModelFamily, TextEncoderSlot
from .model_loading import materialize, module_from_config
from .seeding import mix_seed
from .train_settings import TrainSettings


class TrainableModels:
    def __init__(
        self,
        base: BaseModel,
        lora_settings: lora_lib.LoRASettings,
        settings: TrainSettings,
        device: torch.device,
        dtype: torch.dtype,
        release_frozen_models: bool = False,
        cpu_kernels: CpuKernelChoice = ALL_KERNELS,
        group: ProcessGroup = SINGLE,
    ):
        self.base, self.family, self.group = base, base.model_family, group
        self.lora_settings, self.settings = lora_settings, settings
        self.device, self.dtype = device, dtype
        self.release_frozen_models = release_frozen_models
        self.cpu_kernels = cpu_kernels
        self.trains_text = lora_settings.train_text_encoder
        self._kernels = ExitStack()
        self.unet: Any = None
        self.text_encoders: list[Any] = list(base.text_encoders)
        # What the training step calls: the same modules, inside DistributedDataParallel when several processes train.
        self.forward_unet: Any = None
        self.forward_text_encoders: list[Any] = self.text_encoders

    @property
    def slots(self) -> tuple[TextEncoderSlot, ...]:
        return self.family.text_encoders

    def _training_copy(self, module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """The module itself when it already has the right device and dtype, else a copy that does (ComfyUI keeps
        the caller's model cached, so it must stay untouched)."""
        parameter = next(module.parameters())
        if parameter.device == self.device and parameter.dtype == dtype:
            return module
        clone = materialize(module_from_config(type(module), module.config), module.state_dict(), type(module).__name__, dtype, self.device)
        if self.release_frozen_models:
            module.to("meta")
        return clone

    def inject(self) -> None:
        """Adapters on the denoiser (and the text encoders when they are trained), trainable in fp32."""
        ls = self.lora_settings
        torch.manual_seed(mix_seed(self.settings.seed, 0x1A1D))  # peft draws lora_A's init from the global stream
        self.unet = self._training_copy(self.base.unet, self.dtype)
        conv_rank = ls.effective_conv_rank if ls.targets == "kohya+conv" or ls.conv_rank else None
        lora_lib.inject(
            self.unet, lora_lib.target_pattern(ls.targets), ls.rank, ls.effective_alpha, ls.dropout, "UNet",
            conv_rank=conv_rank, conv_alpha=ls.effective_conv_alpha if conv_rank else None, use_dora=ls.use_dora,
            adapter=ls.adapter,
        )
        if self.trains_text:
            self.text_encoders = [self._training_copy(encoder, self.dtype) for encoder in self.base.text_encoders]
            for slot, encoder in zip(self.slots, self.text_encoders):
                lora_lib.inject(
                    encoder, lora_lib.TEXT_ENCODER_TARGETS, ls.effective_te_rank, ls.effective_te_alpha, ls.dropout,
                    slot.label, use_dora=ls.use_dora, adapter=ls.adapter,
                )
        for model in self.adapted():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()  # adapters train in fp32 under any autocast
        self._fast_kernels()
        trim_freed_memory()
        if self.settings.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            for encoder in self.trained_text_encoders():
                encoder.gradient_checkpointing_enable()
        self.forward_unet = self.group.wrap(self.unet, self.device)
        if self.settings.compile:
            self.forward_unet = compiled(self.forward_unet)
        # SDXL conditions on CLIP-L's penultimate layer, so its last layer's adapters get no gradient.
        self.forward_text_encoders = [self.group.wrap(e, self.device, unused_parameters=True) for e in self.trained_text_encoders()] or self.text_encoders

    def wrapped(self) -> list[Any]:
        """The DistributedDataParallel modules (none with one process)."""
        return [m for m in (self.forward_unet, *self.forward_text_encoders) if m is not None and hasattr(m, "no_sync")]

    def _fast_kernels(self) -> None:
        # Compiled, the kernels are TorchInductor's: ours choose by input shape (a recompile per bucket), and
        # Inductor lowers oneDNN's linear op for prepacked inference weights only (an fp32 compile failed on it).
        if self.device.type != "cpu" or self.settings.compile:
            return
        enter_training_kernels(self._kernels, self.unet, self.text_encoders, self.dtype, self.cpu_kernels)

    def trained_text_encoders(self) -> list[Any]:
        return self.text_encoders if self.trains_text else []

    def adapted(self) -> list[Any]:
        """Every model carrying adapters: the denoiser, then the trained text encoders."""
        return [self.unet, *self.trained_text_encoders()]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Denoiser adapters at the learning rate, each text encoder's at its own."""
        groups = [{"params": [p for p in self.unet.parameters() if p.requires_grad], "lr": self.settings.learning_rate}]
        for encoder, rate in zip(self.trained_text_encoders(), self.settings.text_encoder_rates()):
            groups.append({"params": [p for p in encoder.parameters() if p.requires_grad], "lr": rate})
        return groups

    def train_mode(self, training: bool) -> None:
        self.unet.train(training)
        for encoder in self.text_encoders:
            encoder.train(training and self.trains_text)

    @contextmanager
    def adapters_disabled(self):
        for model in self.adapted():
            lora_lib.set_adapters_enabled(model, False)
        try:
            yield
        finally:
            for model in self.adapted():
                lora_lib.set_adapters_enabled(model, True)

    def namings(self) -> list[tuple[Any, lora_lib.KohyaNaming]]:
        """(model, how kohya names its modules) for every adapted model."""
        pairs = [(self.unet, lora_lib.KohyaNaming(self.family.denoiser_prefix, self.family.denoiser_naming(self.unet)))]
        pairs += [(encoder, lora_lib.KohyaNaming(slot.kohya_prefix)) for slot, encoder in zip(self.slots, self.trained_text_encoders())]
        return pairs

    def kohya_tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for model, naming in self.namings():
            tensors.update(lora_lib.kohya_state_dict(model, naming))
        trim_freed_memory()
        return tensors

    def adapter_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every trainable tensor under its peft name, per model (the exact state a checkpoint resumes from)."""
        states = {"unet": lora_lib.adapter_state(self.unet), "text_encoder": {}}
        for slot, encoder in zip(self.slots, self.trained_text_encoders()):
            states[slot.attribute] = lora_lib.adapter_state(encoder)
        return states

    def load_adapter_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        lora_lib.load_adapter_state(self.unet, states["unet"])
        for slot, encoder in zip(self.slots, self.trained_text_encoders()):
            lora_lib.load_adapter_state(encoder, states[slot.attribute])

    def offload(self, module: torch.nn.Module) -> None:
        if self.release_frozen_models:
            module.to("meta")  # drops the weights' storage
        elif self.device.type != "cpu":
            module.to("cpu")

    def restore(self) -> None:
        """Remove what the run added to the caller's modules and move them off the accelerator."""
        self._kernels.close()
        pairs = [(self.unet, self.base.unet), *zip(self.text_encoders, self.base.text_encoders)]
        for model, original in pairs:
            if model is original:
                lora_lib.remove(model)
                if self.settings.gradient_checkpointing and hasattr(model, "disable_gradient_checkpointing"):
                    model.disable_gradient_checkpointing()
                self.offload(model)
        self.offload(self.base.vae)
        for encoder in self.base.text_encoders:
            self.offload(encoder)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
