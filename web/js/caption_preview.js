// Shows on the Captioner node what it did and a sample of the captions it wrote (its "ui" text output),
// so they can be reviewed before training. Kept in the node's properties: a saved workflow shows them again.
import { app } from "../../../scripts/app.js";
import { drawTextBlock, textFromMessage } from "./node_text.js";

const NODE_TYPE = "LoRATrainer_Captioner";
const PROPERTY = "lora_trainer_captions";
const MAX_LINES = 40;

app.registerExtension({
  name: "lora_trainer.caption_preview",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = textFromMessage(message);
      if (text === null) return;
      this.properties = { ...(this.properties ?? {}), [PROPERTY]: text };
      this.setDirtyCanvas?.(true, true);
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      const text = this.properties?.[PROPERTY];
      if (text && !this.flags?.collapsed) {
        drawTextBlock(this, ctx, text, { maxLines: MAX_LINES, widgetHeight: globalThis.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20 });
      }
      return result;
    };
  },
});
