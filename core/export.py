"""A run's LoRA as the file users get: kohya tensors and the training metadata kohya writes."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from . import lora as lora_lib
from .optim import optimizer_class_name, warmup_step_count


def training_metadata(trainer, step: int) -> dict[str, Any]:
    """kohya's ``ss_*`` training fields and ``modelspec.*`` for a run at ``step``."""
    settings, prediction = trainer.settings, trainer.prediction_type
    extra = {
        "ss_output_name": settings.output_name,
        "ss_steps": str(step),
        "ss_max_train_steps": str(settings.steps),
        "ss_learning_rate": f"{settings.learning_rate:g}",
        "ss_unet_lr": f"{settings.learning_rate:g}",
        "ss_lr_scheduler": settings.lr_scheduler,
        "ss_lr_warmup_steps": str(warmup_step_count(settings.warmup_steps, settings.steps)),
        "ss_resolution": f"({settings.resolution}, {settings.resolution})",
        "ss_seed": str(settings.seed),
        "ss_batch_size_per_device": str(settings.batch_size),
        "ss_total_batch_size": str(trainer.plan.global_batch * settings.grad_accum),
        "ss_gradient_accumulation_steps": str(settings.grad_accum),
        "ss_max_grad_norm": f"{settings.max_grad_norm:g}",
        "ss_mixed_precision": trainer.precision,
        "ss_gradient_checkpointing": str(settings.gradient_checkpointing),
        "ss_optimizer": optimizer_class_name(settings.optimizer),
        "ss_prediction_type": prediction,
        "ss_v_parameterization": str(prediction == "v_prediction"),
        "ss_loss_type": "l2" if settings.loss == "mse" else "huber",
        "ss_min_snr_gamma": f"{settings.min_snr_gamma:g}" if settings.min_snr_gamma else "None",
        "ss_noise_offset": f"{settings.noise_offset:g}" if settings.noise_offset else "None",
        "ss_num_train_images": str(trainer.dataset.num_samples),
        **trainer.plan.dataset_metadata(),
        "ss_dataset_hash": trainer.dataset.content_hash,
        "ss_sd_model_name": os.path.basename(trainer.base.source),
        "ss_training_started_at": trainer.started_at,
        "ss_training_finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ss_flip_aug": str(settings.random_flip),
        "ss_random_crop": str(settings.crop == "random"),
        "modelspec.title": settings.output_name,
        "modelspec.resolution": f"{settings.resolution}x{settings.resolution}",
        "modelspec.date": datetime.now(timezone.utc).date().isoformat(),
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
    }
    if settings.loss == "huber":
        extra["ss_huber_c"] = f"{settings.huber_c:g}"
    if trainer.models.trains_text:
        rates = settings.text_encoder_rates()[: len(trainer.family.text_encoders)]
        extra["ss_text_encoder_lr"] = ",".join(f"{rate:g}" for rate in rates) if len(set(rates)) > 1 else f"{rates[0]:g}"
    if trainer.init_lora is not None:
        extra["ss_network_weights"] = trainer.init_lora.name
    if trainer.validation is not None:
        history = trainer.history
        extra["ss_validation_losses"] = [[step, round(loss, 6)] for step, loss in history.validation]
        extra["ss_validation_images"] = str(len(trainer.validation.dataset))
        if history.best_validation:
            extra["ss_validation_best_step"] = str(history.best_validation[0])
    return extra


def export_lora(trainer, step: int) -> lora_lib.LoRAWeights:
    metadata = lora_lib.build_metadata(trainer.lora_settings, training_metadata(trainer, step), trainer.family.metadata(trainer.prediction_type))
    return lora_lib.LoRAWeights(tensors=trainer.models.kohya_tensors(), metadata=metadata)
