// Shows on the Load Base Checkpoint node which model family was found (SD1.x, SD2.x, SDXL), the size it
// trains at and its training target, as sent by the node with the "lora_trainer.base" event.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "LoRATrainer_LoadBaseCheckpoint";
const EVENT = "lora_trainer.base";
const PROPERTY = "lora_trainer_base";
const LINE_HEIGHT = 16;

function textBottom(node) {
  let bottom = 0;
  for (const widget of node.widgets ?? []) {
    const y = widget.last_y ?? widget.y;
    if (Number.isFinite(y)) bottom = Math.max(bottom, y + (widget.computedHeight ?? globalThis.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20));
  }
  return bottom + 8;
}

function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of String(text).split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      lines.push(line);
      line = word;
    } else {
      line = next;
    }
  }
  if (line) lines.push(line);
  return lines;
}

app.registerExtension({
  name: "lora_trainer.base_family",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      const text = this.properties?.[PROPERTY];
      if (!text || this.flags?.collapsed) return result;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#9fd3a8";
      ctx.textBaseline = "top";
      const lines = wrap(ctx, text, this.size[0] - 20);
      const top = textBottom(this);
      lines.forEach((line, index) => ctx.fillText(line, 10, top + index * LINE_HEIGHT));
      const needed = top + lines.length * LINE_HEIGHT + 6;
      if (this.size[1] < needed) this.setSize?.([this.size[0], needed]);
      ctx.restore();
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
