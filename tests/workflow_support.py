"""What the example workflows may contain: our nodes (read from their INPUT_TYPES) and a list of ComfyUI core nodes.

Each spec is (sockets: [(name, type)], widgets: [name], outputs: [type]). A widget value list has one
entry per widget; ComfyUI's frontend adds a "control_after_generate" value after seed widgets.
"""
from __future__ import annotations

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")

COMFY_CORE_NODES = {
    "CheckpointLoaderSimple": ([], ["ckpt_name"], ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], ["CONDITIONING"]),
    "EmptyLatentImage": ([], ["width", "height", "batch_size"], ["LATENT"]),
    "KSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
        ["LATENT"],
    ),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], ["IMAGE"]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "LossGraphNode": ([("loss", "LOSS_MAP")], ["filename_prefix"], []),
    "LoraLoaderModelOnly": ([("model", "MODEL")], ["lora_name", "strength_model"], ["MODEL"]),
}


def our_node_spec(cls):
    spec = cls.INPUT_TYPES()
    sockets, widgets = [], []
    for section in ("required", "optional"):
        for name, declared in spec.get(section, {}).items():
            kind, options = declared[0], (declared[1] if len(declared) > 1 else {})
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                widgets.append(name)
                if options.get("control_after_generate"):
                    widgets.append("control_after_generate")
            else:
                sockets.append((name, kind))
    return sockets, widgets, list(cls.RETURN_TYPES)


def all_specs(node_class_mappings):
    return {**COMFY_CORE_NODES, **{node_id: our_node_spec(cls) for node_id, cls in node_class_mappings.items()}}
