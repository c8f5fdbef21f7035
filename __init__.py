"""LoRA Trainer for ComfyUI: the custom-node entry point.

ComfyUI imports this file as a package at start-up, so it stays cheap: the
node classes import torch, diffusers and datasets only when a node runs.
"""
WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

# pytest imports this file without a parent package (the repository root is also the test rootdir);
# the suite only makes sense as a package, which is how ComfyUI loads it.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
    from .nodes import run_log as _run_log
    from .nodes.comfy_bridge import api as _api, comfy_available as _comfy_available

    if _comfy_available():
        _api().register_folders()
        _api().add_route("/lora_trainer/last_run/{node_id}", _run_log.handle_request)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
