// Shows on the Load Base Checkpoint node which model family was found (SD1.x, SD2.x, SDXL), the size it
// trains at and its training target, as sent by the node with the "lora_trainer.base" event.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { drawTextBlock } from "./node_text.js";

const NODE_TYPE = "LoRATrainer_LoadBaseCheckpoint";
const EVENT = "lora_trainer.base";
const PROPERTY = "lora_trainer_base";

app.registerExtension({
  name: "lora_trainer.base_family",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      const text = this.properties?.[PROPERTY];
      if (!text || this.flags?.collapsed) return result;
      drawTextBlock(this, ctx, text, { color: "#9fd3a8", widgetHeight: globalThis.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20 });
      return result;
    };
  },

  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      if (!detail || detail.node === undefined) return;
      const node = app.graph?.getNodeById?.(Number(detail.node)) ?? app.graph?.getNodeById?.(String(detail.node));
      if (!node || node.type !== NODE_TYPE) return;
      node.properties = { ...(node.properties ?? {}), [PROPERTY]: String(detail.text ?? "") };
      node.setDirtyCanvas?.(true, true);
    });
  },
});
